"""main.py end to end on tiny processed datasets: the command line (kebab flags, the authors' single-dash
names, config files), run folders, cross-validation, resume after a kill, and the user errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import main
from base.errors import EXIT_USER_ERROR, UserError, run_cli
from base.training.checkpointing import load_torch_file
from base.training.run_folder import read_csv
from configs import Config, apply_overrides, demo_overrides, from_dict, resolve_recipe
from tests.processed_helpers import make_processed_dataset

# tiny models run fastest on one thread (and do not suffer from a busy machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

LINE = re.compile(r"^validation CCC: valence=-?\d\.\d{3}$")
LINE_BOTH = re.compile(r"^validation CCC: valence=-?\d\.\d{3} arousal=-?\d\.\d{3}$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """5 training trials (12-20 frames), 2 validation trials, frames + mfcc + vggish."""
    return make_processed_dataset(tmp_path_factory.mktemp("processed") / "data", n_train=5, n_val=2, n_test=1,
                                  lengths=(16, 12, 20), modalities=("frame", "mfcc", "vggish"))


def fast_args(dataset: Path, save: Path, *extra: str) -> list[str]:
    """An audio-only model (no backbone) on windows of 8 frames: a training run takes about a second."""
    return ["--dataset-path", str(dataset), "--save-path", str(save), "--modality", "vggish", "mfcc",
            "--window-length", "8", "--hop-length", "4", "--batch-size", "4", "--learning-rate", "1e-3",
            "--num-epochs", "2", "--quiet", *extra]


# ----------------------------------------------------------------------------- command line


def test_authors_single_dash_flags_parse_like_kebab_flags():
    authors = main.parse_config([
        "-model_name", "2d1d", "-modality", "frame", "mfcc", "-folds_to_run", "4", "-train_emotion", "arousal",
        "-head", "mh", "-stamp", "s", "-experiment_name", "E", "-window_length", "100", "-hop_length", "50",
        "-batch_size", "2", "-learning_rate", "1e-4", "-min_learning_rate", "1e-7", "-patience", "3",
        "-factor", "0.5", "-gradual_release", "0", "-release_count", "2", "-early_stopping", "7",
        "-num_epochs", "9", "-min_num_epochs", "1", "-seed", "5", "-time_delay", "2", "-dataset_path", "D",
        "-model_save_path", "S", "-resume", "1", "-debug", "3", "-save_model", "0", "-backbone_mode", "ir_se",
        "-cnn1d_embedding_dim", "512", "-cnn1d_channels", "64", "64", "-cnn1d_kernel_size", "3",
        "-cnn1d_dropout", "0.2", "-load_best_at_each_epoch", "0", "-device", "cpu", "-cpu", "1",
    ])
    kebab = main.parse_config([
        "--model-name", "2d1d", "--modality", "frame", "mfcc", "--fold", "4", "--emotion", "arousal",
        "--head", "mh", "--stamp", "s", "--experiment-name", "E", "--window-length", "100", "--hop-length", "50",
        "--batch-size", "2", "--learning-rate", "1e-4", "--min-learning-rate", "1e-7", "--patience", "3",
        "--factor", "0.5", "--gradual-release", "0", "--release-count", "2", "--early-stopping", "7",
        "--num-epochs", "9", "--min-num-epochs", "1", "--seed", "5", "--time-delay", "2", "--dataset-path", "D",
        "--save-path", "S", "--resume", "1", "--debug", "3", "--save-model", "0", "--backbone-mode", "ir_se",
        "--cnn1d-embedding-dim", "512", "--cnn1d-channels", "64", "64", "--cnn1d-kernel-size", "3",
        "--cnn1d-dropout", "0.2", "--load-best-at-each-epoch", "0", "--device", "cpu", "--cpu-threads", "1",
    ])
    assert authors == kebab
    assert kebab.train.fold == (4,) and kebab.model.emotion == "arousal" and kebab.train.save_path == "S"
    assert kebab.model.cnn1d_channels == (64, 64) and kebab.train.resume is True
    assert main.parse_config(["-fold", "0", "2"]).train.fold == (0, 2)
    assert main.parse_config(["-emotion", "both"]).model.emotion == "both"


def test_model_name_is_one_of_the_registered_models(capsys):
    assert main.parse_config(["-model_name", "LFAN"]).model.model_name == "lfan"  # the authors' spelling
    assert main.parse_config(["--model-name", "can"]).model.model_name == "can"
    assert run_cli(main.main, ["--model-name", "gru"]) == EXIT_USER_ERROR  # before any data is read
    assert capsys.readouterr().err == "error: config key 'model_name' must be 2d1d, lfan or can, got 'gru'\n"


def test_boolean_flags_stand_alone_or_take_0_1():
    assert main.parse_config(["--quiet", "--random-backbone"]).train.quiet is True
    assert main.parse_config(["--random-backbone"]).model.random_backbone is True
    assert main.parse_config(["-resume", "0"]).train.resume is False
    assert main.parse_config(["--resume", "true"]).train.resume is True


def test_backbone_from_the_authors_load_path_flags(tmp_path):
    config = main.parse_config(["-model_load_path", str(tmp_path), "-backbone_state_dict", "mine"])
    assert config.model.backbone_checkpoint == str(tmp_path / "mine.pth")
    config = main.parse_config(["-load_path", str(tmp_path)])
    assert config.model.backbone_checkpoint == str(tmp_path / "res50_ir_0.887.pth")
    assert main.parse_config(["--backbone-checkpoint", "w.pth"]).model.backbone_checkpoint == "w.pth"
    with pytest.raises(UserError, match="not both"):
        main.parse_config(["--backbone-checkpoint", "w.pth", "-model_load_path", str(tmp_path)])


def test_gpu_and_cpu_flags_and_ignored_cluster_flags():
    config = main.parse_config(["-gpu", "1", "-cpu", "2", "-high_performance_cluster", "1",
                                "-python_package_path", "/somewhere"])
    assert config.train.device == "cuda:1"  # no silent CPU fallback: without a GPU, resolving it is an error
    assert config.train.cpu_threads == 2
    assert main.parse_config(["-gpu", "1", "--device", "cpu"]).train.device == "cpu"  # --device wins


def test_demo_recipe_then_config_file_then_flags(tmp_path):
    demo = main.parse_config(["--demo"])
    assert demo == resolve_recipe(apply_overrides(Config(), demo_overrides()))
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"train": {"batch_size": 2, "num_epochs": 3}, "patience": 1}))
    config = main.parse_config(["--demo", "--config", str(config_file), "--num-epochs", "4"])
    assert (config.train.batch_size, config.train.num_epochs, config.train.patience) == (2, 4, 1)
    assert config.train.stamp == "demo"


def test_config_file_errors_name_the_key(tmp_path):
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"train": {"batch_size": "eight"}}))
    with pytest.raises(UserError, match="'train.batch_size' must be an integer"):
        main.parse_config(["--config", str(config_file)])
    config_file.write_text(json.dumps({"train": {"bogus": 1}}))
    with pytest.raises(UserError, match="unknown config key 'train.bogus'"):
        main.parse_config(["--config", str(config_file)])


def test_unknown_flags_and_wrong_types_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.parse_config(["--bogus", "1"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main.parse_config(["-batch_size", "eight"])
    assert "--batch-size/-batch_size: invalid int value: 'eight'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main.parse_config(["--resume", "maybe"])
    assert "--resume/-resume" in capsys.readouterr().err


def test_help_says_the_backbone_link_is_dead_and_what_to_do(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.parse_config(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "link to it is dead" in text and "--random-backbone" in text and "--backbone-checkpoint" in text
    assert "-high_performance_cluster" in text and "ignored" in text


# ----------------------------------------------------------------------------- user errors


def test_missing_or_wrong_dataset_path(tmp_path):
    with pytest.raises(UserError, match="no dataset given: pass --dataset-path"):
        main.main(["--save-path", str(tmp_path), "--quiet"])
    with pytest.raises(UserError, match="does not exist"):
        main.main(fast_args(tmp_path / "nowhere", tmp_path / "runs"))


def test_fold_outside_0_to_5(dataset, tmp_path):
    with pytest.raises(UserError, match="fold 6 is outside 0-5"):
        main.main(fast_args(dataset, tmp_path, "--fold", "6"))


def test_modality_missing_on_disk(dataset, tmp_path):
    with pytest.raises(UserError, match=r"has no egemaps.npy"):
        main.main(fast_args(dataset, tmp_path, "--modality", "vggish", "egemaps"))


def test_frames_without_backbone_weights_explain_the_dead_link(dataset, tmp_path):
    with pytest.raises(UserError, match="link is dead.*--random-backbone"):
        main.main(fast_args(dataset, tmp_path, "--modality", "frame", "mfcc"))


def test_nan_features_and_arrays_of_different_lengths(tmp_path):
    root = make_processed_dataset(tmp_path / "nan", lengths=12, modalities=("mfcc",))
    mfcc = np.load(root / "npy_data" / "train_002" / "mfcc.npy")
    mfcc[3, 5] = np.nan
    np.save(root / "npy_data" / "train_002" / "mfcc.npy", mfcc)
    with pytest.raises(UserError, match="'train_002': mfcc.npy contains NaN"):
        main.main(fast_args(root, tmp_path / "runs", "--modality", "mfcc"))
    np.save(root / "npy_data" / "train_002" / "mfcc.npy", np.zeros_like(mfcc[:10]))
    with pytest.raises(UserError, match="'train_002' has arrays of different lengths"):
        main.main(fast_args(root, tmp_path / "runs", "--modality", "mfcc"))


def test_incompatible_checkpoint_for_resume_names_the_keys(dataset, tmp_path):
    main.main(fast_args(dataset, tmp_path, "--num-epochs", "1", "--cnn1d-kernel-size", "3"))
    with pytest.raises(UserError, match=r"different configuration: model.cnn1d_kernel_size \(checkpoint 3, now 5\)"):
        main.main(fast_args(dataset, tmp_path, "--resume", "1"))


# ----------------------------------------------------------------------------- training runs


def test_run_folder_contents_and_the_printed_result(dataset, tmp_path, capsys):
    assert main.main(fast_args(dataset, tmp_path, "--emotion", "both", "--head", "mh", "--stamp", "r1")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert LINE_BOTH.match(lines[-1]), lines[-1]
    run = tmp_path / "ABAW2_2d1d_vggish-mfcc_both_mh_fold0_r1"
    expected = {"config.json", "history.csv", "learning_curves.png", "traces.png", "metrics.json",
                "checkpoint.pt", "best.pt"}
    assert expected <= {path.name for path in run.iterdir()}
    history = read_csv(run / "history.csv")
    assert [row["epoch"] for row in history] == ["0", "1"]
    assert {"train_loss", "valence_ccc", "valence_pcc", "valence_rmse", "arousal_ccc", "lr", "n_released",
            "seconds"} <= set(history[0])
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["validation"]) == {"valence", "arousal"}
    assert set(metrics["per_trial"]) == {"val_000", "val_001"}
    best = max(range(2), key=lambda epoch: float(history[epoch]["score"]))
    assert metrics["best_epoch"] == best
    # the final evaluation of the best weights reproduces that epoch's figures
    assert metrics["validation"]["valence"]["ccc"] == pytest.approx(float(history[best]["valence_ccc"]), abs=1e-9)
    saved = from_dict(json.loads((run / "config.json").read_text()))
    assert saved == main.parse_config(fast_args(dataset, tmp_path, "--emotion", "both", "--head", "mh",
                                                "--stamp", "r1"))
    assert load_torch_file(run / "best.pt")["epoch"] == best
    summary = read_csv(tmp_path / "ABAW2_2d1d_vggish-mfcc_both_mh_r1_cv_summary.csv")
    assert [row["fold"] for row in summary] == ["0", "mean"]


def test_single_emotion_prints_only_that_emotion(dataset, tmp_path, capsys):
    main.main(fast_args(dataset, tmp_path, "--num-epochs", "1", "--emotion", "valence", "--head", "mh"))
    assert LINE.match(capsys.readouterr().out.strip().splitlines()[-1])


def test_cross_validation_over_two_folds_writes_a_summary(dataset, tmp_path, capsys):
    main.main(fast_args(dataset, tmp_path, "--fold", "0", "1", "--num-epochs", "1", "--stamp", "cv"))
    out = capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir() if p.is_dir()} == {
        "ABAW2_2d1d_vggish-mfcc_valence_sh_fold0_cv", "ABAW2_2d1d_vggish-mfcc_valence_sh_fold1_cv"}
    rows = read_csv(tmp_path / "ABAW2_2d1d_vggish-mfcc_valence_sh_cv_cv_summary.csv")
    assert [row["fold"] for row in rows] == ["0", "1", "mean"]
    mean = np.mean([float(row["valence_ccc"]) for row in rows[:2]])
    assert float(rows[2]["valence_ccc"]) == pytest.approx(mean)
    table = out.splitlines()
    assert table[0].split() == ["fold", "best", "epoch", "valence", "CCC"]
    assert [line.split()[0] for line in table[1:4]] == ["0", "1", "mean"]
    assert table[-1] == f"validation CCC: valence={mean:.3f}"
    fold1 = json.loads((tmp_path / "ABAW2_2d1d_vggish-mfcc_valence_sh_fold1_cv" / "config.json").read_text())
    assert fold1["train"]["fold"] == [1]


def run_and_resume(dataset: Path, tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    """An uninterrupted 2-epoch run, and a run killed after epoch 1 (num_epochs 1) then resumed to 2."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    main.main(fast_args(dataset, straight, *extra))
    main.main(fast_args(dataset, killed, *extra, "--num-epochs", "1"))
    main.main(fast_args(dataset, killed, *extra, "--resume", "1"))
    return straight, killed


def assert_same_run(straight: Path, killed: Path) -> None:
    (run_a,) = [p for p in straight.iterdir() if p.is_dir()]
    (run_b,) = [p for p in killed.iterdir() if p.is_dir()]
    history_a, history_b = read_csv(run_a / "history.csv"), read_csv(run_b / "history.csv")
    assert len(history_a) == 2
    for row_a, row_b in zip(history_a, history_b, strict=True):
        for key in row_a:
            if key != "seconds":
                assert float(row_a[key]) == pytest.approx(float(row_b[key]), abs=1e-6), key
    for name in ("checkpoint.pt", "best.pt"):
        state_a = load_torch_file(run_a / name)["model"]
        state_b = load_torch_file(run_b / name)["model"]
        assert state_a.keys() == state_b.keys()
        for key in state_a:
            torch.testing.assert_close(state_a[key], state_b[key], atol=1e-6, rtol=0, msg=key)
    metrics_a = json.loads((run_a / "metrics.json").read_text())
    metrics_b = json.loads((run_b / "metrics.json").read_text())
    for emotion, figures in metrics_a["validation"].items():
        assert figures == pytest.approx(metrics_b["validation"][emotion], abs=1e-6), emotion


def test_resume_after_a_kill_equals_an_uninterrupted_run(dataset, tmp_path):
    straight, killed = run_and_resume(dataset, tmp_path, "--emotion", "both")
    assert_same_run(straight, killed)
    # resuming a finished run trains nothing more
    main.main(fast_args(dataset, killed, "--emotion", "both", "--resume", "1"))
    (run,) = [p for p in killed.iterdir() if p.is_dir()]
    assert len(read_csv(run / "history.csv")) == 2


@pytest.mark.slow
def test_resume_with_face_frames_random_crops_and_backbone_release(tmp_path):
    # the IR-50 on 40x40 crops: checks the crop/flip generator, dropout and release state are restored
    dataset = make_processed_dataset(tmp_path / "data", n_train=5, n_val=1, n_test=0, lengths=10,
                                     modalities=("frame", "mfcc"))
    straight, killed = run_and_resume(dataset, tmp_path, "--modality", "frame", "mfcc", "--random-backbone",
                                      "--debug", "2")
    assert_same_run(straight, killed)
    (run,) = [p for p in killed.iterdir() if p.is_dir()]
    assert {row["n_released"] for row in read_csv(run / "history.csv")} == {"1"}
