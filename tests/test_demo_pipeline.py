"""The README's demo end to end: demo database -> preprocessing -> statistics -> fold-0 training.

The demo's labels are learnable by construction, so the multimodal model must reach a validation
CCC of 0.5 on both dimensions; with the training labels moved to other trials it must not (this
guards the frame/label alignment of the whole pipeline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import calculate_mean_and_std
import main
import preprocessing
from base.errors import run_cli
from base.safe_pickle import load_pickle
from tests.shared_work import build_once

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture(scope="session")
def processed_full_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's demo database, preprocessed with --jobs 2 and its statistics: built once for all workers."""

    def build(workspace: Path) -> None:
        database, output = workspace / "Affwild2", workspace / "Affwild2_processed"
        assert run_cli(preprocessing.main, ["--make-demo", str(database), "--quiet"]) == 0
        assert run_cli(preprocessing.main, ["--database", str(database), "--output", str(output),
                                            "--jobs", "2", "--quiet"]) == 0
        assert run_cli(calculate_mean_and_std.main, ["--output", str(output), "--quiet"]) == 0

    workspace, _ = build_once(tmp_path_factory, "full_demo", build)
    return workspace / "Affwild2_processed"


# The README's demo trains 6 epochs; its first already clears the bar (valence 0.756, arousal 0.682
# with the real labels; 0.272 / 0.009 with the moved ones), so the tests stop there: the whole recipe
# after epoch 0 (plateau, release, early stopping) has its own tests in test_trainer.py / test_recipe.py.
TEST_EPOCHS = "1"


def _train_demo(dataset: Path, save_path: Path) -> tuple[float, float, Path]:
    """Train the README's demo command (``TEST_EPOCHS`` epochs); its validation CCC and its run folder."""
    argv = ["--demo", "--dataset-path", str(dataset), "--save-path", str(save_path), "--fold", "0",
            "--emotion", "both", "--modality", "frame", "vggish", "mfcc", "--quiet", "--num-epochs", TEST_EPOCHS]
    assert run_cli(main.main, argv) == 0
    run = next(p for p in save_path.iterdir() if p.is_dir())
    validation = json.loads((run / "metrics.json").read_text())["validation"]
    return validation["valence"]["ccc"], validation["arousal"]["ccc"], run


@pytest.fixture(scope="session")
def demo_run(processed_full_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[float, float, Path]:
    """The demo trained on its real labels, once for all workers (the moved-labels control compares to it)."""
    runs, (valence, arousal) = build_once(tmp_path_factory, "full_demo_run",
                                          lambda save_path: _train_demo(processed_full_demo, save_path)[:2])
    return valence, arousal, next(p for p in runs.iterdir() if p.is_dir())


def test_demo_learns_both_dimensions(demo_run) -> None:
    valence, arousal, run = demo_run
    assert valence >= 0.5 and arousal >= 0.5, (valence, arousal)
    for name in ("config.json", "history.csv", "metrics.json", "learning_curves.png", "traces.png", "best.pt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["train"]["recipe"] == "authors"  # the default recipe


def test_labels_moved_to_other_trials_are_not_learned(processed_full_demo: Path, request: pytest.FixtureRequest,
                                                      tmp_path: Path) -> None:
    # With two validation trials, a model trained on wrong labels still lands on a chance CCC that
    # spread up to 0.37 (valence, the authors' recipe): the guard is relative to the real labels'
    # run (much lower on both dimensions) and absolute below the demo's bar of 0.5.
    shuffled = tmp_path / "shuffled"
    shutil.copytree(processed_full_demo, shuffled)
    trials = list(load_pickle(shuffled / "dataset_info.pkl")["partition"]["Train_Set"])
    labels = [np.load(shuffled / "npy_data" / t / "label.npy") for t in trials]
    for index, trial in enumerate(trials):  # each trial gets the next trial's trace (edge-padded)
        donor = labels[(index + 1) % len(trials)]
        n = len(labels[index])
        moved = donor[:n] if len(donor) >= n else np.pad(donor, ((0, n - len(donor)), (0, 0)), mode="edge")
        np.save(shuffled / "npy_data" / trial / "label.npy", moved.astype(np.float32))
    valence, arousal, _run = _train_demo(shuffled, tmp_path / "runs")
    # asked for only now: under pytest-xdist another worker trains the real labels meanwhile
    real_valence, real_arousal, _ = request.getfixturevalue("demo_run")
    assert valence < 0.5 and arousal < 0.5, (valence, arousal)
    assert real_valence - valence >= 0.3 and real_arousal - arousal >= 0.3, (valence, arousal, real_valence,
                                                                            real_arousal)
