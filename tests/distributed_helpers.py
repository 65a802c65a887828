"""Worker functions for the multi-process tests (they must be importable by spawned processes), and the
tiny ``torchrun`` launch of ``main.py`` shared by the tests and ``benchmarks/ddp_stress.py``.

Each worker joins a gloo process group on the CPU through the same environment variables that
``torchrun`` sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tests.processed_helpers import make_processed_dataset

ROOT = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
CCC_LINE = "validation CCC: valence="


# ----------------------------------------------------------------------------- a torchrun launch


def make_ddp_dataset(root: Path) -> Path:
    """5 training trials of 20 frames (windows of 8, hop 4: 20 windows) and 3 validation trials."""
    return make_processed_dataset(root, n_train=5, n_val=3, n_test=0, lengths=(20, 20, 20, 20, 20, 13, 9, 17),
                                  modalities=("mfcc", "vggish"))


def audio_args(dataset: Path, *extra: str) -> list[str]:
    """``main.py`` flags for the audio-only model on ``make_ddp_dataset`` (quiet)."""
    return ["--dataset-path", str(dataset), "--modality", "vggish", "mfcc", "--window-length", "8",
            "--hop-length", "4", "--learning-rate", "1e-3", "--cnn1d-dropout", "0", "--quiet", *extra]


def torchrun_command(dataset: Path, save_path: Path, log_dir: Path | None = None) -> list[str]:
    """``torchrun --standalone --nproc_per_node 2 main.py`` for one epoch of the tiny audio model.

    With ``log_dir`` each rank's stdout and stderr go to its own files there (``--redirects 3``).
    """
    logs = ["--log-dir", str(log_dir), "--redirects", "3"] if log_dir is not None else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD_SIZE),
            *logs, "main.py", *audio_args(dataset, "--num-epochs", "1", "--batch-size", "2", "--save-path",
                                          str(save_path), "--cpu-threads", "1")]


@dataclass
class LaunchOutcome:
    """How one ``torchrun`` launch ended."""

    returncode: int | None  # None: killed after the timeout (a hang)
    seconds: float
    stdout: str
    stderr: str
    rank_stdout: dict[int, str] = field(default_factory=dict)  # with a log_dir only
    rank_stderr: dict[int, str] = field(default_factory=dict)

    @property
    def hung(self) -> bool:
        return self.returncode is None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, parents first (read from /proc; only ``pid`` where there is none).

    ``torchrun`` starts each rank in a session of its own, so killing its process group misses them.
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, ...
        except (OSError, IndexError):  # the process ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, index = [pid], 0
    while index < len(tree):
        tree.extend(children.get(tree[index], []))
        index += 1
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process it started (a launch that hung)."""
    for member in process_tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def launch(command: list[str], timeout_s: float, extra_env: dict[str, str] | None = None,
           log_dir: Path | None = None) -> LaunchOutcome:
    """Run ``command`` from the repository root; after ``timeout_s`` kill it and its ranks (a hang)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
        returncode: int | None = process.returncode
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        stdout, stderr = process.communicate()
        returncode = None
    except BaseException:  # interrupted: leave nothing running
        kill_tree(process.pid)
        raise
    outcome = LaunchOutcome(returncode, time.perf_counter() - started, stdout, stderr)
    if log_dir is not None:  # <log_dir>/<run id>/attempt_0/<rank>/{stdout,stderr}.log
        for path in sorted(log_dir.glob("*/attempt_0/*/std*.log")):
            logs = outcome.rank_stdout if path.name == "stdout.log" else outcome.rank_stderr
            logs[int(path.parent.name)] = path.read_text(errors="replace")
    return outcome


def success_problems(outcome: LaunchOutcome) -> list[str]:
    """What is wrong with a launch that should have trained and exited 0 (empty when nothing is)."""
    if outcome.hung:
        return [f"hung (killed after {outcome.seconds:.0f} s)"]
    problems = [] if outcome.returncode == 0 else [f"exit code {outcome.returncode}"]
    printed = outcome.stdout + "".join(outcome.rank_stdout.values())
    if printed.count(CCC_LINE) != 1:
        problems.append(f"{printed.count(CCC_LINE)} CCC lines printed, not 1")
    if "terminate called" in outcome.stderr + "".join(outcome.rank_stderr.values()):
        problems.append("a rank aborted (terminate called)")
    return problems + ([outcome.stderr.strip().splitlines()[-1]] if problems and outcome.stderr.strip() else [])


def failure_problems(outcome: LaunchOutcome, limit_s: float) -> list[str]:
    """What is wrong with a launch in which one rank failed on purpose: it must exit non-zero within
    ``limit_s``, every rank writing exactly one line, an ``error:`` line, and no traceback."""
    if outcome.hung:
        return [f"hung (killed after {outcome.seconds:.0f} s)"]
    problems = [f"exit code {outcome.returncode}, not non-zero"] if outcome.returncode == 0 else []
    if outcome.seconds > limit_s:
        problems.append(f"took {outcome.seconds:.0f} s, more than {limit_s:.0f} s")
    for rank in range(WORLD_SIZE):
        lines = [line for line in outcome.rank_stderr.get(rank, "").splitlines() if line.strip()]
        lines += [line for line in outcome.rank_stdout.get(rank, "").splitlines() if line.strip()]
        if len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"rank {rank} wrote {len(lines)} lines, not one error line: {lines[:3]}")
    return problems


# ----------------------------------------------------------------------------- spawned workers


def free_port() -> int:
    """A TCP port nobody listens on right now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def set_rank_environment(rank: int, world_size: int, port: int) -> None:
    """What ``torchrun --nproc_per_node world_size`` would put in the environment of ``rank``."""
    os.environ.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    })


def evaluate_worker(rank: int, world_size: int, port: int, setup_path: str, out_dir: str) -> None:
    """Evaluate given weights on a partition with ``world_size`` ranks; each rank pickles its result."""
    from base.training.distributed import init_distributed
    from base.training.rank_exit import distributed_run

    torch.set_num_threads(1)
    set_rank_environment(rank, world_size, port)
    context = init_distributed("cpu")
    with distributed_run(context):
        trainer = build_trainer(setup_path, context)
        evaluation = trainer.evaluate(trainer.train_data)
        with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as handle:
            pickle.dump({"metrics": evaluation.metrics, "predictions": evaluation.predictions,
                         "n_windows_here": len(trainer._loader(trainer.train_data, False, 0).dataset)}, handle)


def fit_worker(rank: int, world_size: int, port: int, setup_path: str, out_dir: str) -> None:
    """Train with ``world_size`` ranks; each rank pickles its final weights and its history."""
    from base.training.distributed import init_distributed
    from base.training.rank_exit import distributed_run

    torch.set_num_threads(1)
    set_rank_environment(rank, world_size, port)
    context = init_distributed("cpu")
    with distributed_run(context):
        trainer = build_trainer(setup_path, context)
        state = trainer.fit()
        with open(Path(out_dir) / f"fit{rank}.pkl", "wb") as handle:
            pickle.dump({"model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
                         "history": state.history}, handle)


def build_trainer(setup_path: str, context=None):
    """A Trainer over the dataset, config and weights pickled in ``setup_path``."""
    from base.data.processed import ProcessedDataset
    from base.training.cross_validation import fold_partitions, needs_statistics
    from base.training.run_folder import RunFolder
    from base.training.trainer import Trainer
    from model import build_model

    with open(setup_path, "rb") as handle:
        setup = pickle.load(handle)
    config = setup["config"]
    dataset = ProcessedDataset(config.train.dataset_path)
    mean_std = dataset.mean_std() if needs_statistics(config.model.modality) else None
    train, validation = fold_partitions(dataset, config, 0, mean_std)
    model = build_model(config.model)
    model.load_state_dict(setup["state"])
    return Trainer(model, config, torch.device("cpu"), RunFolder(Path(setup["run_dir"])), train, validation, context)


def main_worker(rank: int, world_size: int, port: int, args: list[str], save_root: str) -> None:
    """``main.main(args)`` as one rank of a torchrun job, each rank with its own ``--save-path``.

    Separate save paths reveal which rank wrote what (the save path does not change the run).
    """
    import main

    torch.set_num_threads(1)
    set_rank_environment(rank, world_size, port)
    main.main([*args, "--save-path", str(Path(save_root) / f"rank{rank}")])


def resume_worker(rank: int, world_size: int, port: int, args: list[str], out_dir: str) -> None:
    """``run_fold`` as ``main.py`` runs it, three times in one process group: 3 epochs straight (save path
    ``straight``), 1 epoch (``resumed``: the run killed after epoch 0), then the same run resumed up to 3.

    Each rank pickles its global random states after each run and the zero pattern of the first
    training dropout outputs of the straight run (``dropout{rank}.pkl``, ``rng{rank}.pkl``).
    """
    import torch.distributed as dist

    import main
    from base.training import cross_validation
    from base.training.checkpointing import capture_rng_state
    from base.training.distributed import init_distributed, rank_config
    from base.training.rank_exit import distributed_run

    torch.set_num_threads(1)
    set_rank_environment(rank, world_size, port)
    context = init_distributed("cpu")
    dropped: list[torch.Tensor] = []
    build_model = cross_validation.build_model

    def record(module, inputs, output) -> None:
        if module.training and len(dropped) < 4:
            dropped.append((output == 0).all(dim=-1).clone())  # (B, C): channels Dropout1d zeroed

    def recording_build_model(model_config):
        model = build_model(model_config)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.dropout._DropoutNd):
                module.register_forward_hook(record)
        return model

    try:
        with distributed_run(context):
            states = {}
            for name, save, extra in (("straight", "straight", ["--num-epochs", "3"]),
                                      ("killed", "resumed", ["--num-epochs", "1"]),
                                      ("resumed", "resumed", ["--num-epochs", "3", "--resume", "1"])):
                cross_validation.build_model = recording_build_model if name == "straight" else build_model
                config = rank_config(main.parse_config([*args, *extra, "--save-path", str(Path(out_dir) / save)]),
                                     context)
                dataset = cross_validation.open_dataset(config)
                cross_validation.run_fold(config, dataset, 0, context.device, dataset.mean_std(), context)
                dist.barrier()  # rank 0 has written its checkpoint before any rank resumes from it
                states[name] = capture_rng_state()
            with open(Path(out_dir) / f"rng{rank}.pkl", "wb") as handle:
                pickle.dump(states, handle)
            with open(Path(out_dir) / f"dropout{rank}.pkl", "wb") as handle:
                pickle.dump(dropped, handle)
    finally:
        cross_validation.build_model = build_model


def thread_names() -> list[str]:
    """The names of this process's threads (Linux: gloo names its own ``gloo_tcp_loop``, ``pt_gloo_runloop``)."""
    names = []
    for task in sorted(Path("/proc/self/task").iterdir()):
        names.append((task / "comm").read_text().strip())
    return names


def threads_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """A DDP step, a gathered object, then ``distributed_run`` leaves; each rank pickles its thread names
    while in the process group (``during``) and after leaving it (``after``)."""
    import torch.distributed as dist

    from base.training.distributed import all_gather_objects, init_distributed, wrap_model
    from base.training.rank_exit import distributed_run

    torch.set_num_threads(1)
    set_rank_environment(rank, world_size, port)
    context = init_distributed("cpu")
    with distributed_run(context):
        model = wrap_model(torch.nn.Linear(4, 1), context)
        model(torch.ones(2, 4)).sum().backward()
        all_gather_objects({"rank": rank}, context)  # the last collective of main.py is one of these
        during = thread_names()
        del model
    assert not dist.is_initialized()
    with open(Path(out_dir) / f"threads{rank}.pkl", "wb") as handle:
        pickle.dump({"during": during, "after": thread_names()}, handle)
