"""The 24-task job array: index mapping, the main.py arguments from the environment, and the PBS and
SLURM scripts run for one index on the CPU without a scheduler (first run, then a requeue)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import main
from base.errors import UserError
from base.training.job_array import N_TASKS, ArrayTask, array_task, main_arguments, table
from base.training.run_folder import read_csv
from tests.processed_helpers import make_processed_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("index", "emotion", "fold", "variant"), [
    (0, "valence", 0, "unimodal"), (5, "valence", 5, "unimodal"), (6, "valence", 0, "fusion"),
    (11, "valence", 5, "fusion"), (12, "arousal", 0, "unimodal"), (20, "arousal", 2, "fusion"),
    (23, "arousal", 5, "fusion"),
])
def test_index_to_emotion_fold_variant(index, emotion, fold, variant):
    assert array_task(index) == ArrayTask(index, emotion, fold, variant)


def test_the_array_covers_every_training_once():
    tasks = [array_task(index) for index in range(N_TASKS)]
    assert N_TASKS == 24
    assert len({(t.emotion, t.fold, t.variant) for t in tasks}) == 24
    assert {t.modalities for t in tasks} == {("frame",), ("frame", "vggish", "mfcc")}
    for bad in (-1, 24):
        with pytest.raises(UserError, match=f"job array index {bad} is outside 0-23"):
            array_task(bad)
    assert table().splitlines()[7].split() == ["6", "valence", "fusion", "0", "frame", "vggish", "mfcc"]


def test_main_arguments_come_from_the_environment_and_parse():
    environ = {"DATASET_PATH": "/data/processed", "SAVE_PATH": "/scratch/runs", "BACKBONE_CHECKPOINT": "/w/b.pth",
               "SLURM_CPUS_PER_TASK": "8", "PRECISION": "bf16", "EXTRA_ARGS": "--num-epochs 3 --stamp 'my run'"}
    args = main_arguments(array_task(20), environ)
    config = main.parse_config(args)
    assert (config.model.emotion, config.train.fold, config.model.modality) == ("arousal", (2,), ("frame", "vggish", "mfcc"))
    assert (config.train.dataset_path, config.train.save_path) == ("/data/processed", "/scratch/runs")
    assert config.model.backbone_checkpoint == "/w/b.pth"
    assert config.train.resume and config.train.cpu_threads == 8 and config.train.precision == "bf16"
    assert config.train.num_epochs == 3 and config.train.stamp == "my run"  # EXTRA_ARGS come last and win
    defaults = main.parse_config(main_arguments(array_task(0), {}))
    assert (defaults.train.dataset_path, defaults.train.save_path, defaults.train.stamp) == ("Affwild2_processed", "runs", "array")
    assert defaults.model.backbone_checkpoint == "" and defaults.train.resume
    assert main.parse_config(main_arguments(array_task(0), {"RESUME": "0", "NCPUS": "4"})).train.cpu_threads == 4
    assert defaults.train.device == "cuda"  # a GPU job never falls back to the CPU silently
    assert main.parse_config(main_arguments(array_task(0), {"DEVICE": "cpu"})).train.device == "cpu"
    with pytest.raises(UserError, match="EXTRA_ARGS could not be split"):
        main_arguments(array_task(0), {"EXTRA_ARGS": "--stamp 'unclosed"})


def test_threads_are_shared_among_the_ranks_of_a_task():
    def threads(**environ):
        return main.parse_config(main_arguments(array_task(0), environ)).train.cpu_threads

    assert threads(SLURM_CPUS_PER_TASK="16", NPROC_PER_NODE="4") == 4
    assert threads(NCPUS="8", NPROC_PER_NODE="3") == 2
    assert threads(SLURM_CPUS_PER_TASK="2", NPROC_PER_NODE="4") == 1  # at least one
    assert threads(SLURM_CPUS_PER_TASK="16", NPROC_PER_NODE="4", CPU_THREADS="3") == 3  # per rank, as given
    assert threads() == 0  # no scheduler: torch's default
    with pytest.raises(UserError, match="NPROC_PER_NODE must be a positive integer, got 'two'"):
        main_arguments(array_task(0), {"NCPUS": "8", "NPROC_PER_NODE": "two"})


def test_python_m_base_job_array_passes_a_device():
    env = {key: value for key, value in os.environ.items() if key != "DEVICE"}
    result = subprocess.run([sys.executable, "-m", "base.job_array", "0"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[lines.index("--device") + 1] == "cuda"


def test_the_module_prints_one_argument_per_line(capsys):
    from base.training import job_array

    assert job_array.main(["7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[lines.index("--modality") + 1: lines.index("--modality") + 4] == ["frame", "vggish", "mfcc"]
    assert lines[lines.index("--fold") + 1] == "1"
    with pytest.raises(UserError, match="give a job array index"):
        job_array.main([])


# ----------------------------------------------------------------------------- the scripts themselves


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_processed_dataset(tmp_path_factory.mktemp("array") / "data", n_train=5, n_val=2, n_test=0,
                                  lengths=(12, 16), modalities=("mfcc",))


def run_script(script: str, index_variable: str, index: int, dataset: Path, save: Path) -> subprocess.CompletedProcess:
    # The frame models are too slow for the CPU test suite: EXTRA_ARGS (last, so they win) swap the
    # variant's modalities for MFCC and shrink the recipe; everything else is the script's own path.
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "PBS_"))},
        index_variable: str(index), "PROJECT_DIR": str(ROOT), "PYTHON": sys.executable, "DATASET_PATH": str(dataset),
        "SAVE_PATH": str(save), "STAMP": "test", "CPU_THREADS": "1", "DEVICE": "cpu",
        "EXTRA_ARGS": "--modality mfcc --window-length 8 --hop-length 4 --batch-size 4 --num-epochs 1 --learning-rate 1e-3",
    }
    return subprocess.run(["bash", str(ROOT / script)], cwd=save.parent, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize(("script", "index_variable"), [("job.slurm", "SLURM_ARRAY_TASK_ID"),
                                                        ("job.pbs", "PBS_ARRAY_INDEX")])
def test_a_script_trains_its_index_and_resumes_on_requeue(script, index_variable, dataset, tmp_path):
    save = tmp_path / "runs"
    first = run_script(script, index_variable, 15, dataset, save)  # arousal, unimodal, fold 3
    assert first.returncode == 0, first.stdout + first.stderr
    run = save / "ABAW2_2d1d_mfcc_arousal_sh_fold3_test"
    assert json.loads((run / "config.json").read_text())["train"]["fold"] == [3]
    assert len(read_csv(run / "history.csv")) == 1
    log = (save / "logs" / "task_15.log").read_text()
    assert re.search(r"fold 3: no checkpoint in .* starting from scratch", log), log
    assert "validation CCC: arousal=" in log and "validation CCC: arousal=" in first.stdout
    assert f"the results table (results.md/.csv/.png): {sys.executable} -m base.report {save}" in first.stdout

    requeued = run_script(script, index_variable, 15, dataset, save)  # the same task started again
    assert requeued.returncode == 0, requeued.stdout + requeued.stderr
    log = (save / "logs" / "task_15.log").read_text()
    assert log.count("=== ") == 4 and "resumed ABAW2_2d1d_mfcc_arousal_sh_fold3_test after epoch 0" in log
    assert len(read_csv(run / "history.csv")) == 1  # the finished run was not trained again


def test_a_script_without_its_array_index_says_so(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "PBS_"))}
    for script, message in (("job.slurm", "SLURM_ARRAY_TASK_ID is not set"), ("job.pbs", "PBS_ARRAY_INDEX is not set")):
        result = subprocess.run(["bash", str(ROOT / script)], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode != 0 and message in result.stderr
