"""The 24 trainings of the paper as one scheduler job array (SPEC §5): index -> (emotion, fold, variant).

2 emotions x 2 model variants x 6 folds; index = (emotion x 2 + variant) x 6 + fold, so that a
contiguous range of 6 indices is one model's cross-validation::

    0-5    valence  unimodal  folds 0-5        12-17  arousal  unimodal  folds 0-5
    6-11   valence  fusion    folds 0-5        18-23  arousal  fusion    folds 0-5

``job.pbs`` and ``job.slurm`` call ``python -m base.training.job_array INDEX``, which prints the ``main.py``
arguments of that index, one per line. Paths and settings come from environment variables:

    DATASET_PATH         processed dataset (default: Affwild2_processed)
    SAVE_PATH            folder of the run folders (default: runs)
    BACKBONE_CHECKPOINT  res50_ir_0.887.pth or another IR-50 state dict (default: none)
    RANDOM_BACKBONE      1: allow random backbone weights when no checkpoint is given (default: 0)
    STAMP                last part of every run folder name (default: array)
    RESUME               1: continue a run from its checkpoint.pt when it has one (default: 1, so a
                         requeued task resumes; a first run starts from scratch)
    DEVICE               cuda, cuda:N, cpu or auto (default: cuda, so a node without a usable GPU
                         fails at once instead of training on the CPU for a day)
    NPROC_PER_NODE       ranks (torchrun processes) of one task (default: 1); the CPUs are shared
    CPU_THREADS          torch CPU threads of each rank (default: SLURM_CPUS_PER_TASK, else PBS's NCPUS,
                         divided among the NPROC_PER_NODE ranks; else torch's)
    NUM_WORKERS          DataLoader worker processes per rank (default: the config's, -1 = auto)
    PRECISION            fp32, bf16 or fp16 (default: the config's)
    EXTRA_ARGS           more main.py flags, appended last so that they win (e.g. "--num-epochs 5")

``python -m base.training.job_array --list`` prints the whole table.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from base.errors import UserError, run_cli
from configs import EMOTIONS

N_FOLDS = 6
VARIANT_MODALITIES: dict[str, tuple[str, ...]] = {
    "unimodal": ("frame",),  # the 2d1d visual baseline
    "fusion": ("frame", "vggish", "mfcc"),  # leader-follower attentive fusion
}
VARIANTS = tuple(VARIANT_MODALITIES)
N_TASKS = len(EMOTIONS) * len(VARIANTS) * N_FOLDS  # 24


@dataclass(frozen=True)
class ArrayTask:
    """One training of the array."""

    index: int
    emotion: str
    fold: int
    variant: str

    @property
    def modalities(self) -> tuple[str, ...]:
        return VARIANT_MODALITIES[self.variant]


def array_task(index: int) -> ArrayTask:
    """The (emotion, fold, variant) of job-array ``index`` (0-23).

    >>> array_task(0), array_task(7).variant, array_task(23).emotion
    (ArrayTask(index=0, emotion='valence', fold=0, variant='unimodal'), 'fusion', 'arousal')
    """
    if not 0 <= index < N_TASKS:
        raise UserError(f"job array index {index} is outside 0-{N_TASKS - 1} (2 emotions x 2 variants x 6 folds)")
    model, fold = divmod(index, N_FOLDS)
    emotion, variant = divmod(model, len(VARIANTS))
    return ArrayTask(index=index, emotion=EMOTIONS[emotion], fold=fold, variant=VARIANTS[variant])


def _flag(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, "").strip()


def _positive_int(environ: Mapping[str, str], name: str, default: str = "") -> int:
    text = _flag(environ, name) or default
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{name} must be a positive integer, got '{text}'")
    return int(text)


def threads_per_rank(environ: Mapping[str, str]) -> str:
    """``CPU_THREADS``; else the task's CPUs (SLURM's, then PBS's) divided among its ranks, at least 1; else ''.

    >>> threads_per_rank({"SLURM_CPUS_PER_TASK": "16", "NPROC_PER_NODE": "4"}), threads_per_rank({"NCPUS": "3"})
    ('4', '3')
    """
    if _flag(environ, "CPU_THREADS"):
        return _flag(environ, "CPU_THREADS")
    for name in ("SLURM_CPUS_PER_TASK", "NCPUS"):
        if _flag(environ, name):
            return str(max(1, _positive_int(environ, name) // _positive_int(environ, "NPROC_PER_NODE", "1")))
    return ""


def main_arguments(task: ArrayTask, environ: Mapping[str, str]) -> list[str]:
    """The ``main.py`` command line of ``task``, with paths and settings from ``environ``."""
    args = [
        "--dataset-path", _flag(environ, "DATASET_PATH") or "Affwild2_processed",
        "--save-path", _flag(environ, "SAVE_PATH") or "runs",
        "--emotion", task.emotion,
        "--fold", str(task.fold),
        "--modality", *task.modalities,
        "--stamp", _flag(environ, "STAMP") or "array",
        "--resume", _flag(environ, "RESUME") or "1",
        "--device", _flag(environ, "DEVICE") or "cuda",
    ]
    if _flag(environ, "BACKBONE_CHECKPOINT"):
        args += ["--backbone-checkpoint", _flag(environ, "BACKBONE_CHECKPOINT")]
    if _flag(environ, "RANDOM_BACKBONE"):
        args += ["--random-backbone", _flag(environ, "RANDOM_BACKBONE")]
    threads = threads_per_rank(environ)
    if threads:
        args += ["--cpu-threads", threads]
    if _flag(environ, "NUM_WORKERS"):
        args += ["--num-workers", _flag(environ, "NUM_WORKERS")]
    if _flag(environ, "PRECISION"):
        args += ["--precision", _flag(environ, "PRECISION")]
    try:
        extra = shlex.split(environ.get("EXTRA_ARGS", ""))
    except ValueError as exc:
        raise UserError(f"EXTRA_ARGS could not be split into flags ({exc})") from None
    return args + extra


def table() -> str:
    """Every index of the array and its training, one per line."""
    lines = [f"{'index':>5} {'emotion':<8} {'variant':<9} {'fold':>4}  modalities"]
    for index in range(N_TASKS):
        task = array_task(index)
        lines.append(f"{index:>5} {task.emotion:<8} {task.variant:<9} {task.fold:>4}  {' '.join(task.modalities)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m base.training.job_array",
        description="Print the main.py arguments of one job-array index, one per line.",
    )
    parser.add_argument("index", nargs="?", type=int, help=f"array index 0-{N_TASKS - 1}")
    parser.add_argument("--list", action="store_true", help="print the table of all indices and exit")
    args = parser.parse_args(argv)
    if args.list:
        print(table())
        return 0
    if args.index is None:
        raise UserError("give a job array index (0-23), or --list")
    print("\n".join(main_arguments(array_task(args.index), os.environ)))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
