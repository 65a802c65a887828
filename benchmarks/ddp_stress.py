"""The ``torchrun`` launch of the test suite, many times in a row while other processes load the cores.

Each run is ``torchrun --standalone --nproc_per_node 2 main.py`` (gloo, CPU), one epoch of the tiny
audio model on the dataset of ``tests/test_distributed.py``, with each rank's output in its own log
file. A run is counted as

* ok: exit 0, the CCC line printed once, no rank aborted;
* failed: anything else that ended by itself (exit code and the last line are shown);
* hung: still running after ``--timeout`` seconds (then killed).

With ``--fail-rank R`` rank R raises at the start of its first epoch (``ABAW2_TEST_FAIL_RANK``, a test
hook); then ok means the run exited non-zero within ``--limit`` seconds and every rank wrote exactly
one ``error:`` line and nothing else. ``--load K`` starts K busy processes (one core each) for the
whole check, as a parallel test suite would.

Issue 22 (rank 1 aborting at exit, "terminate called without an active exception") showed up as a
failed run here.

Usage:
    python benchmarks/ddp_stress.py [--runs 30] [--load 2] [--fail-rank R] [--timeout 240] [--limit 60]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from base.training.rank_exit import FAIL_RANK_ENV  # noqa: E402
from tests.distributed_helpers import (  # noqa: E402
    WORLD_SIZE,
    failure_problems,
    launch,
    make_ddp_dataset,
    success_problems,
    torchrun_command,
)

BUSY_LOOP = "while True: pass"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="torchrun launches, one after the other (default: 30)")
    parser.add_argument("--load", type=int, default=2, help="busy processes running meanwhile (default: 2)")
    parser.add_argument("--fail-rank", type=int, default=None, choices=range(WORLD_SIZE),
                        help="this rank fails on purpose at the start of its first epoch")
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds after which a run counts as hung and is killed (default: 240)")
    parser.add_argument("--limit", type=float, default=60.0,
                        help="with --fail-rank: seconds within which the run must have exited (default: 60)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the dataset, runs and logs go (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.load < 0:
        parser.error("--runs must be at least 1 and --load at least 0")
    return args


def start_load(n_processes: int) -> list[subprocess.Popen]:
    """``n_processes`` Python processes that each keep one core busy until stopped."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n_processes)]


def stop_load(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def stress(args: argparse.Namespace, workdir: Path) -> int:
    """Run the launches; print one line per run and the counts. 0 when every run was ok."""
    dataset = make_ddp_dataset(workdir / "data")
    extra_env = {FAIL_RANK_ENV: str(args.fail_rank)} if args.fail_rank is not None else {}
    counts = {"ok": 0, "failed": 0, "hung": 0}
    seconds: list[float] = []
    load = start_load(args.load)
    try:
        for run in range(args.runs):
            log_dir = workdir / f"logs{run}"
            outcome = launch(torchrun_command(dataset, workdir / f"runs{run}", log_dir), args.timeout, extra_env,
                             log_dir)
            problems = (failure_problems(outcome, args.limit) if args.fail_rank is not None
                        else success_problems(outcome))
            verdict = "hung" if outcome.hung else "failed" if problems else "ok"
            counts[verdict] += 1
            seconds.append(outcome.seconds)
            detail = f" (exit {outcome.returncode})" if args.fail_rank is not None and not outcome.hung else ""
            print(f"run {run + 1:3d}/{args.runs}: {verdict:6s} {outcome.seconds:6.1f} s{detail}"
                  + (f"  {'; '.join(problems)}" if problems else ""), flush=True)
    finally:
        stop_load(load)
    what = f"rank {args.fail_rank} failing on purpose" if args.fail_rank is not None else "normal runs"
    print(f"{args.runs} runs ({what}, {args.load} busy processes): {counts['ok']} ok, {counts['failed']} failed, "
          f"{counts['hung']} hung; wall time min {min(seconds):.1f} s, median {statistics.median(seconds):.1f} s, "
          f"max {max(seconds):.1f} s")
    return 0 if counts["ok"] == args.runs else 1


def stop_on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the load and the current launch are then stopped (finally blocks)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)  # also when started in the background, where SIGINT is ignored
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return stress(args, args.workdir)
    with tempfile.TemporaryDirectory(prefix="ddp_stress_") as workdir:
        return stress(args, Path(workdir))


if __name__ == "__main__":
    sys.exit(main())
