"""Preprocessing split into N shards that run at the same time, on any machines sharing one output folder.

A shard is a set of videos (the ``_left``/``_right`` trials of a video always go together): shard
``I/N`` (1-based, I = 1..N) processes the videos ``assign_videos`` gives it. The assignment is
deterministic: videos in decreasing file size (ties by name), each to the shard with the fewest bytes
so far, so N shards get about equal work from the same database on every machine.

What the shards share in ``OUT``, and why it is safe:

* ``npy_data/<trial>``: a trial belongs to one shard; it is written to ``npy_data/.tmp-<trial>`` and
  renamed when complete, and a shard cleans only its own trials' stale ``.tmp-*`` folders.
* ``.cache/<video>``: per video, so per shard; every file in it is written atomically.
* ``.shards/plan.json``: the full trial list and the settings that shape the arrays, created once
  (the first shard to start, by an atomic link) and checked by every other shard, so shards started
  with another database, another N or other settings refuse to run.
* ``.shards/shard-III-of-NNN.json``: each shard's results (one row per trial, the summary's columns).
* ``dataset_info.pkl`` and ``preprocessing_summary.csv``: written once every trial is there (done,
  or skipped as bad input), by the last shard to finish or by ``--finalize``, under a lock file
  (``.shards/finalize.lock``, created with O_EXCL, which NFS supports) so two never write together.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from base import atomic
from base.errors import EnvironmentFailure, UserError

log = logging.getLogger(__name__)

SHARD_DIR = ".shards"
PLAN_NAME = "plan.json"
LOCK_NAME = "finalize.lock"
STALE_LOCK_S = 300.0  # a lock older than this was left by a killed process (finalizing takes seconds)
LOCK_WAIT_S = 900.0
_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def results_name(self) -> str:
        return f"shard-{self.index:03d}-of-{self.count:03d}.json"


@dataclass(frozen=True)
class PlannedTrial:
    """A trial of the plan: what ``dataset_info.pkl`` needs, and the shard that processes it."""

    name: str
    partition: str
    video: str
    shard: int


@dataclass(frozen=True)
class Plan:
    """Every trial of the database with its shard, and the settings every shard must share.

    Attributes:
        n_shards: N.
        trials: in the database's order (the summary's).
        settings: the preprocessing settings that change the arrays (frame size, sample rate, ...).
        vggish_weights: what ``dataset_info.pkl`` says about the VGGish weights.
    """

    n_shards: int
    trials: tuple[PlannedTrial, ...]
    settings: dict[str, Any]
    vggish_weights: str

    def trials_of(self, shard: int) -> list[PlannedTrial]:
        return [t for t in self.trials if t.shard == shard]


def parse_shard(text: str) -> Shard:
    """``"2/8"`` -> ``Shard(2, 8)``; 1-based, so the shards of N are 1/N .. N/N.

    >>> parse_shard("2/8")
    Shard(index=2, count=8)
    """
    match = _SHARD_RE.match(text)
    if match is None:
        raise UserError(f"--shard {text!r}: give I/N, e.g. --shard 1/4 (shards are numbered 1 to N)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise UserError(f"--shard {text}: I must be between 1 and N (shards are numbered 1 to N)")
    return Shard(index, count)


def assign_videos(sizes: Mapping[str, int], n_shards: int) -> dict[str, int]:
    """Video -> shard (1-based): largest first, each to the shard with the fewest bytes so far.

    >>> assign_videos({"a": 5, "b": 4, "c": 3, "d": 3, "e": 1}, 2)
    {'a': 1, 'b': 2, 'c': 2, 'd': 1, 'e': 2}
    """
    loads = [0] * n_shards
    shard_of = {}
    for video in sorted(sizes, key=lambda name: (-sizes[name], name)):
        lightest = min(range(n_shards), key=lambda i: (loads[i], i))
        loads[lightest] += sizes[video]
        shard_of[video] = lightest + 1
    return dict(sorted(shard_of.items()))


def video_sizes(trials: Sequence[Any]) -> dict[str, int]:
    """Bytes of each trial's video file (0 when it has none), by video name."""
    sizes: dict[str, int] = {}
    for trial in trials:
        path = trial.video_path
        sizes[trial.video] = path.stat().st_size if path is not None and path.is_file() else 0
    return sizes


def make_plan(trials: Sequence[Any], n_shards: int, settings: Mapping[str, Any], vggish_weights: str) -> Plan:
    """The plan of a database's ``trials`` (``Trial``s, in their order) over ``n_shards``."""
    shard_of = assign_videos(video_sizes(trials), n_shards)
    planned = tuple(PlannedTrial(t.name, t.partition, t.video, shard_of[t.video]) for t in trials)
    return Plan(n_shards, planned, dict(settings), vggish_weights)


def _plan_path(output: Path) -> Path:
    return Path(output) / SHARD_DIR / PLAN_NAME


def _plan_to_json(plan: Plan) -> str:
    return json.dumps({"n_shards": plan.n_shards, "trials": [asdict(t) for t in plan.trials],
                       "settings": plan.settings, "vggish_weights": plan.vggish_weights}, indent=1)


def read_plan(output: str | Path) -> Plan:
    """The plan the shards of ``output`` recorded."""
    path = _plan_path(Path(output))
    if not path.is_file():
        raise UserError(f"{output} holds no sharded run ({SHARD_DIR}/{PLAN_NAME} is missing): run the shards "
                        "first (--shard I/N); a run without --shard writes dataset_info.pkl itself")
    data = json.loads(path.read_text())
    return Plan(int(data["n_shards"]), tuple(PlannedTrial(**t) for t in data["trials"]), data["settings"],
                data["vggish_weights"])


def record_plan(output: str | Path, plan: Plan) -> Plan:
    """Record ``plan`` as the plan of ``output`` (the first shard), or check it against the recorded one."""
    path = _plan_path(Path(output))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        handle, name = tempfile.mkstemp(prefix=f".{PLAN_NAME}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "w") as stream:
                stream.write(_plan_to_json(plan))
            os.link(name, path)  # atomic create-if-absent with the whole content, NFS included
        except FileExistsError:
            pass  # another shard was first
        except OSError:  # a filesystem without hard links: a rename (the same content wins either way)
            if not path.exists():
                os.replace(name, path)
        finally:
            Path(name).unlink(missing_ok=True)
    recorded = read_plan(output)
    differences = plan_differences(recorded, plan)
    if differences:
        raise UserError(
            f"{path} was written by shards started differently ({'; '.join(differences)}): start every "
            f"shard with the same database, N and settings, or delete {path.parent} to start over"
        )
    if recorded.vggish_weights != plan.vggish_weights:
        log.warning("this shard's VGGish weights (%s) are not the plan's (%s); dataset_info.pkl will name the "
                    "plan's", plan.vggish_weights, recorded.vggish_weights)
    return recorded


# settings added after plans were first recorded: the value an older plan's shards used
LEGACY_SETTINGS = {"features": ["abaw2"]}


def setting(plan: Plan, key: str) -> Any:
    """A setting of ``plan``; for a plan recorded before ``key`` existed, what its shards did."""
    return plan.settings.get(key, LEGACY_SETTINGS.get(key))


def plan_differences(recorded: Plan, plan: Plan) -> list[str]:
    """What makes ``plan`` incompatible with ``recorded`` (VGGish weight paths may differ between machines)."""
    differences = []
    if recorded.n_shards != plan.n_shards:
        differences.append(f"N is {recorded.n_shards} there, {plan.n_shards} here")
    if recorded.trials != plan.trials and (recorded.n_shards == plan.n_shards or
                                           {t.name for t in recorded.trials} != {t.name for t in plan.trials}):
        theirs, ours = {t.name for t in recorded.trials}, {t.name for t in plan.trials}
        if theirs != ours:
            extra, lacking = sorted(ours - theirs), sorted(theirs - ours)
            differences.append(f"trials differ: {len(extra)} more here {extra[:3]}, {len(lacking)} fewer {lacking[:3]}")
        else:
            differences.append("videos are assigned differently (are the video files the same?)")
    for key in sorted(set(recorded.settings) | set(plan.settings)):
        theirs, ours = setting(recorded, key), setting(plan, key)
        if theirs != ours:
            differences.append(f"{key} is {theirs} there, {ours} here")
    return differences


def write_shard_results(output: str | Path, shard: Shard, rows: Sequence[Mapping[str, Any]]) -> None:
    """Record what shard ``shard`` did: one summary row per trial."""
    path = Path(output) / SHARD_DIR / shard.results_name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps({"shard": str(shard), "rows": list(rows)}, indent=1))


def read_shard_results(output: str | Path) -> dict[str, dict[str, Any]]:
    """Trial -> its summary row, from every shard's results."""
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted((Path(output) / SHARD_DIR).glob("shard-*-of-*.json")):
        for row in json.loads(path.read_text())["rows"]:
            rows[row["trial"]] = row
    return rows


def missing_message(missing: Sequence[PlannedTrial], plan: Plan, n_listed: int = 4) -> str:
    """One line: how many trials are missing, and which, shard by shard."""
    by_shard: dict[int, list[str]] = {}
    for trial in missing:
        by_shard.setdefault(trial.shard, []).append(trial.name)
    parts = []
    for shard, names in sorted(by_shard.items()):
        shown = ", ".join(names[:n_listed]) + (f", ... ({len(names) - n_listed} more)" if len(names) > n_listed else "")
        parts.append(f"shard {shard}/{plan.n_shards}: {len(names)} ({shown})")
    return f"{len(missing)} of {len(plan.trials)} trials are not done: " + "; ".join(parts)


@contextmanager
def finalize_lock(output: str | Path, wait_s: float = LOCK_WAIT_S, stale_s: float = STALE_LOCK_S) -> Iterator[None]:
    """Hold ``.shards/finalize.lock`` (O_EXCL): one process at a time checks and writes the shared files."""
    path = Path(output) / SHARD_DIR / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            _break_if_stale(path, stale_s)
            if time.monotonic() > deadline:
                raise EnvironmentFailure(
                    f"{path} has been held for over {wait_s:.0f} s: if no shard is finalizing, delete it and "
                    "run --finalize") from None
            time.sleep(0.2)
    try:
        os.write(handle, f"{socket.gethostname()} {os.getpid()} {time.time():.0f}\n".encode())
        os.close(handle)
        yield
    finally:
        path.unlink(missing_ok=True)


def _break_if_stale(path: Path, stale_s: float) -> None:
    try:
        age_s = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return
    if age_s > stale_s:
        log.warning("removing %s, left %.0f s ago by a process that did not finish", path, age_s)
        path.unlink(missing_ok=True)
