"""job_preprocess.slurm / job_preprocess.pbs without a scheduler: fake sbatch/qsub and a fake interpreter
record what would be submitted and run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEDULERS = {  # script: (submit command, job id variable, array index variable, array flag)
    "job_preprocess.slurm": ("sbatch", "SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", "--array=1-4"),
    "job_preprocess.pbs": ("qsub", "PBS_JOBID", "PBS_ARRAY_INDEX", "-J 1-4"),
}


def _recorder(path: Path, record: Path, output: str, exit_code: int = 0) -> None:
    """A fake command that appends its arguments (and FINALIZE) to ``record`` and prints ``output``."""
    path.write_text(f'#!/bin/bash\necho "$(basename "$0") FINALIZE=${{FINALIZE:-0}} $*" >> "{record}"\n'
                    f'echo "{output}"\nexit {exit_code}\n')
    path.chmod(0o755)


def _run(script: str, tmp_path: Path, extra_env: dict[str, str], exit_code: int = 0) -> tuple[subprocess.CompletedProcess,
                                                                                              list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "record.txt"
    record.unlink(missing_ok=True)
    _recorder(bin_dir / "sbatch", record, "4242")
    _recorder(bin_dir / "qsub", record, "4242[].server")
    _recorder(bin_dir / "python", record, "preprocessing ran", exit_code)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "PBS_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", PROJECT_DIR=str(ROOT), PYTHON=str(bin_dir / "python"),
               DATABASE="/data/db", OUTPUT="/data/out", N_SHARDS="4", LOG_DIR=str(tmp_path / "logs"), **extra_env)
    result = subprocess.run(["bash", str(ROOT / script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    return result, record.read_text().splitlines() if record.is_file() else []


@pytest.mark.parametrize("script", sorted(SCHEDULERS))
def test_bash_submits_the_array_then_a_dependent_finalize_job(script, tmp_path):
    submit, _, _, array_flag = SCHEDULERS[script]
    result, calls = _run(script, tmp_path, {})
    assert result.returncode == 0, result.stderr
    assert len(calls) == 2
    assert calls[0].startswith(f"{submit} FINALIZE=0") and array_flag in calls[0]
    assert calls[1].startswith(submit) and "FINALIZE=1" in calls[1] and "afterany:4242" in calls[1]
    assert "submitted shards 1-4" in result.stdout


@pytest.mark.parametrize("script", sorted(SCHEDULERS))
def test_a_task_runs_its_shard_and_passes_the_exit_code_on(script, tmp_path):
    _, job_id, index, _ = SCHEDULERS[script]
    result, calls = _run(script, tmp_path, {job_id: "7", index: "3", "VGGISH_CHECKPOINT": "/w/vggish_model.ckpt",
                                            "JOBS": "2", "EXTRA_ARGS": "--keep-cache"}, exit_code=3)
    assert result.returncode == 3  # a machine failure reaches the scheduler
    (call,) = calls
    assert call == ("python FINALIZE=0 preprocessing.py --database /data/db --output /data/out --shard 3/4 --jobs 2 "
                    "--quiet --vggish-checkpoint /w/vggish_model.ckpt --keep-cache")
    assert "preprocessing ran" in (tmp_path / "logs" / "shard_3_of_4.log").read_text()


@pytest.mark.parametrize("script", sorted(SCHEDULERS))
def test_the_finalize_job_and_a_wrong_index(script, tmp_path):
    _, job_id, index, _ = SCHEDULERS[script]
    result, calls = _run(script, tmp_path, {job_id: "8", "FINALIZE": "1"})
    assert result.returncode == 0 and calls == ["python FINALIZE=1 preprocessing.py --output /data/out --finalize"]
    result, calls = _run(script, tmp_path, {job_id: "9", index: "5"})
    assert result.returncode == 2 and "N_SHARDS=4" in result.stderr and not calls
    result, calls = _run(script, tmp_path, {job_id: "9"})
    assert result.returncode != 0 and "not an array" in result.stderr and not calls
