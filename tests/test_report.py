"""``python -m base.report``: the paper's table from a folder of run folders (issue 14)."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from base.data.processed import ProcessedDataset
from base.errors import UserError
from base.prediction.prediction import load_fold_models, score_validation
from base.training import report
from base.training.cross_validation import fold_config
from base.training.job_array import array_task
from base.training.run_folder import read_csv, run_folder, write_csv, write_json
from configs import Config, apply_overrides, save_config
from tests.conftest import ROOT
from tests.prediction_helpers import save_run, tiny_config
from tests.processed_helpers import make_processed_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FUSION = ["frame", "vggish", "mfcc"]
# (emotion, modalities) -> fold -> best-epoch validation CCC; None: no run folder at all
FAKE_CCC = {
    ("valence", ("frame",)): [0.30, 0.40, 0.50, 0.20, 0.60, 0.40],
    ("valence", tuple(FUSION)): [0.50, 0.45, None, 0.55, 0.40, 0.60],
    ("arousal", ("frame",)): [0.10, 0.20, 0.30, 0.40, 0.50, "unfinished"],
    ("arousal", tuple(FUSION)): [None, 0.60, 0.70, 0.60, 0.70, 0.65],
}


def write_fake_run(save_path: Path, emotion: str, modalities: tuple[str, ...], fold: int, ccc) -> Path:
    """A run folder as training leaves it: config.json, history.csv and (when finished) metrics.json."""
    config = apply_overrides(Config(), {"emotion": emotion, "modality": list(modalities), "stamp": "array",
                                        "save_path": str(save_path)})
    config = fold_config(config, fold)
    run = run_folder(config, fold).create()
    save_config(config, run.path)
    best = 0.3 if ccc == "unfinished" else ccc
    history = [{"epoch": e, "train_loss": 0.9 - 0.1 * e, f"{emotion}_ccc": best - 0.1 * (e != 1),
                f"{emotion}_pcc": 0.0, f"{emotion}_rmse": 0.5, "score": best - 0.1 * (e != 1), "improved": int(e == 1),
                "lr": 1e-5, "n_released": 1, "seconds": 1.0} for e in range(3)]
    write_csv(history, run.history_csv)
    if ccc != "unfinished":
        write_json({"fold": fold, "run": run.name, "best_epoch": 1, "best_score": ccc, "epochs_run": 3,
                    "trained_emotions": [emotion],
                    "validation": {emotion: {"ccc": ccc, "pcc": 0.0, "rmse": 0.5}}}, run.metrics_json)
    return run.path


@pytest.fixture
def fake_runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for (emotion, modalities), values in FAKE_CCC.items():
        for fold, ccc in enumerate(values):
            if ccc is not None:
                write_fake_run(root, emotion, modalities, fold, ccc)
    (root / "logs").mkdir()
    (root / "logs" / "config.json").write_text('{"not": "a run"}')  # ignored: not a training config
    return root


def test_fold_mean_and_sample_std_by_hand():
    mean, std = report.fold_mean_std([0.4, 0.5, 0.6])
    assert mean == pytest.approx(0.5) and std == pytest.approx(0.1)
    mean, std = report.fold_mean_std([0.7])
    assert mean == pytest.approx(0.7) and math.isnan(std)


def test_array_index_of_a_group_and_fold():
    group = report.GroupKey("2d1d", "sh", tuple(FUSION), "arousal", "authors", "ABAW2", "array")
    task = array_task(report.array_index(group, 4))
    assert (task.emotion, task.variant, task.fold) == ("arousal", "fusion", 4)
    assert report.array_index(dataclasses.replace(group, head="mh"), 0) is None
    assert report.array_index(dataclasses.replace(group, modalities=("frame", "mfcc")), 0) is None


def test_runs_without_a_recipe_key_predate_the_recipes():
    old = {"model": {"model_name": "2d1d", "modality": ["frame"], "emotion": "valence", "head": "sh"},
           "train": {"experiment_name": "ABAW2", "stamp": "s"}}
    assert report.group_of(old).recipe == "corrected"  # as configs.from_dict reads them
    new = {**old, "train": {**old["train"], "recipe": "authors"}}
    assert report.group_of(new).recipe == "authors"


def test_24_runs_two_missing_one_unfinished(fake_runs, tmp_path, capsys):
    out = tmp_path / "table"
    assert report.main([str(fake_runs), "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    rows = {(row["emotion"], row["modalities"]): row for row in read_csv(out / "results.csv")}
    assert len(rows) == 4

    # hand-computed: mean over the finished folds, sample std (n - 1)
    expected = {
        ("valence", "frame"): (6, 0.40, math.sqrt(0.10 / 5)),
        ("valence", "frame-vggish-mfcc"): (5, 0.50, math.sqrt(0.025 / 4)),
        ("arousal", "frame"): (5, 0.30, math.sqrt(0.10 / 4)),
        ("arousal", "frame-vggish-mfcc"): (5, 0.65, 0.05),
    }
    for key, (n_folds, mean, std) in expected.items():
        row = rows[key]
        assert int(row["n_folds"]) == n_folds, key
        assert float(row["mean"]) == pytest.approx(mean), key
        assert float(row["std"]) == pytest.approx(std), key
        assert row["recipe"] == "authors" and row["model"] == "2d1d"
    assert rows[("valence", "frame-vggish-mfcc")]["fold2"] == ""  # missing: not averaged as 0
    assert rows[("arousal", "frame")]["fold5"] == ""  # unfinished: not averaged
    assert float(rows[("arousal", "frame")]["fold4"]) == pytest.approx(0.5)
    # published figures beside ours (SPEC §7)
    assert float(rows[("valence", "frame-vggish-mfcc")]["paper_validation_fold0"]) == pytest.approx(0.469)
    assert float(rows[("arousal", "frame-vggish-mfcc")]["paper_test_merged"]) == pytest.approx(0.492)
    assert float(rows[("arousal", "frame")]["paper_test_fold0"]) == pytest.approx(0.303)
    # merged CCC: only the complete group could have one, and its fake runs have no best.pt
    assert all(row["merged"] == "" for row in rows.values())

    markdown = (out / "results.md").read_text()
    assert markdown == printed.split("wrote ")[0]
    assert "| 2d1d | frame | valence | authors | valence | 0.300 | 0.400 | 0.500 | 0.200 | 0.600 | 0.400 | 6/6 | " \
           "0.400 | 0.141 | - | - | 0.267 | - |" in markdown
    missing = [line for line in markdown.splitlines() if line.startswith("- missing:")]
    assert missing == [
        "- missing: ABAW2_2d1d_frame-vggish-mfcc_valence_sh_fold2_array (job array index 8)",
        "- missing: ABAW2_2d1d_frame-vggish-mfcc_arousal_sh_fold0_array (job array index 18)",
    ]
    unfinished = [line for line in markdown.splitlines() if line.startswith("- unfinished")]
    assert len(unfinished) == 1 and "ABAW2_2d1d_frame_arousal_sh_fold5_array" in unfinished[0]
    assert "3 epochs done, best validation CCC so far: arousal 0.300" in unfinished[0]
    assert "a run has no best.pt" in markdown

    png = (out / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_a_whole_missing_array_group_is_listed(fake_runs, tmp_path):
    for path in fake_runs.glob("*_frame_arousal_*"):
        for file in path.iterdir():
            file.unlink()
        path.rmdir()
    result = report.write_report(fake_runs, tmp_path / "t", merged=False)
    arousal_visual = [line for line in result.problems if "_frame_arousal_" in line]
    assert len(arousal_visual) == 6 and all(line.startswith("missing:") for line in arousal_visual)


def test_merged_ccc_is_the_validation_commands_figure(tmp_path):
    dataset = make_processed_dataset(tmp_path / "data", n_train=5, n_val=2, n_test=0,
                                     lengths=(20, 14, 26, 18, 22, 30, 25), modalities=("mfcc",))
    config = tiny_config(dataset, modality=["mfcc"], emotion="valence")
    runs = [save_run(tmp_path / "runs", config, fold, seed=fold) for fold in range(6)]
    for fold, path in enumerate(runs):
        write_json({"fold": fold, "best_epoch": 0, "validation": {"valence": {"ccc": 0.1 * fold}}},
                   path / "metrics.json")
    result = report.write_report(tmp_path / "runs", tmp_path / "out", quiet=True)
    (row,) = result.rows
    score, _ = score_validation(load_fold_models(runs), ProcessedDataset(dataset))
    assert float(row["merged"]) == pytest.approx(score.merged["valence"])
    assert float(row["mean"]) == pytest.approx(0.25)
    assert result.problems == []
    assert "| 6/6 |" in result.markdown.read_text()


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        report.write_report(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no run folder"):
        report.write_report(tmp_path / "empty")


def test_the_module_command_runs(fake_runs, tmp_path):
    completed = subprocess.run([sys.executable, "-m", "base.report", str(fake_runs), "--no-merged", "--quiet",
                                "--output", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert re.search(r"wrote .*results\.md, .*results\.csv and .*results\.png", completed.stdout)
