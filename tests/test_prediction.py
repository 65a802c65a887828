"""Prediction with fold models: loading runs, grouping by emotion, windows with overlap averaging and
z-scoring, time-delay alignment, fold fusion (two and six folds) and the validation-set command."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import predict
from base.data.processed import ProcessedDataset
from base.errors import UserError
from base.prediction.prediction import (
    ArrayTrials,
    FoldModel,
    align_to_frames,
    check_same_lengths,
    find_checkpoints,
    fuse_folds,
    group_by_emotion,
    load_fold_model,
    load_fold_models,
    predict_ensemble,
    predict_trials,
)
from base.training.checkpointing import atomic_torch_save, load_torch_file
from base.training.metrics import ccc, ccc_centering
from configs import Config
from tests.prediction_helpers import save_run, tiny_config
from tests.processed_helpers import make_processed_dataset

# tiny models run fastest on one thread (and do not suffer from a busy machine)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """5 training, 2 validation (30 and 25 frames) and 2 test trials, mfcc + egemaps."""
    return make_processed_dataset(tmp_path_factory.mktemp("processed") / "data", n_train=5, n_val=2, n_test=2,
                                  lengths=(20, 14, 26, 18, 22, 30, 25, 21, 34), modalities=("mfcc", "egemaps"))


@pytest.fixture(scope="module")
def six_valence_runs(dataset, tmp_path_factory) -> list[Path]:
    save = tmp_path_factory.mktemp("runs")
    config = tiny_config(dataset, modality=["mfcc", "egemaps"], emotion="valence")
    return [save_run(save, config, fold, seed=10 + fold) for fold in range(6)]


@pytest.fixture(scope="module")
def arousal_run(dataset, tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("runs"), tiny_config(dataset, modality=["mfcc"], emotion="arousal",
                                                                  head="mh"), 0, seed=3)


class ProbeModel(nn.Module):
    """Outputs, per frame, its position in the window (column 0) and the first mfcc value (column 1)."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:  # -> (B, T, 2)
        mfcc = inputs["mfcc"]  # (B, T, 39)
        position = torch.arange(mfcc.shape[1], dtype=mfcc.dtype).expand(mfcc.shape[0], -1)  # (B, T)
        return torch.stack([position, mfcc[..., 0]], dim=-1)


class ConstantSlopeModel(nn.Module):
    """Outputs ``slope * frame-in-window + offset`` in its one column."""

    def __init__(self, slope: float, offset: float) -> None:
        super().__init__()
        self.slope, self.offset = slope, offset

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:  # -> (B, T, 1)
        mfcc = inputs["mfcc"]
        position = torch.arange(mfcc.shape[1], dtype=mfcc.dtype).expand(mfcc.shape[0], -1)
        return (self.slope * position + self.offset)[..., None]


def probe(config: Config, model: nn.Module, name: str = "probe") -> FoldModel:
    return FoldModel(source=Path(name) / "best.pt", config=config, model=model)


# ----------------------------------------------------------------------------- finding and loading runs


def test_runs_are_found_as_folders_files_or_a_parent_folder(six_valence_runs):
    parent = six_valence_runs[0].parent
    assert find_checkpoints([six_valence_runs[0]]) == [six_valence_runs[0] / "best.pt"]
    assert find_checkpoints([six_valence_runs[1] / "best.pt"]) == [six_valence_runs[1] / "best.pt"]
    assert find_checkpoints([parent, six_valence_runs[0]]) == [run / "best.pt" for run in six_valence_runs]


def test_run_paths_that_hold_nothing(tmp_path):
    with pytest.raises(UserError, match="run .*nope does not exist"):
        find_checkpoints([tmp_path / "nope"])
    with pytest.raises(UserError, match="holds no best.pt, neither itself nor its run folders"):
        find_checkpoints([tmp_path])
    with pytest.raises(UserError, match="no runs given"):
        find_checkpoints([])


def test_a_loaded_run_predicts_like_the_saved_model(six_valence_runs):
    fold_model = load_fold_model(six_valence_runs[2] / "best.pt")
    assert fold_model.fold == 2 and fold_model.emotions == ("valence",) and fold_model.name.endswith("fold2_test")
    torch.manual_seed(12)  # save_run's seed for fold 2
    from model import build_model

    reference = build_model(fold_model.config).eval()
    inputs = {"mfcc": torch.randn(1, 16, 39), "egemaps": torch.randn(1, 16, 23)}
    with torch.no_grad():
        assert torch.allclose(fold_model.model(inputs), reference(inputs))


def test_broken_model_files_are_user_errors(six_valence_runs, tmp_path):
    data = load_torch_file(six_valence_runs[0] / "best.pt")
    atomic_torch_save({"model": data["model"]}, tmp_path / "no_config.pt")
    with pytest.raises(UserError, match="not a model file of this project: it needs a 'model' state dict and its"):
        load_fold_model(tmp_path / "no_config.pt")
    config = dict(data["config"])
    config["model"] = {**config["model"], "no_such_key": 1}
    atomic_torch_save({"model": data["model"], "config": config}, tmp_path / "future.pt")
    with pytest.raises(UserError, match="does not fit this version of the code .*no_such_key"):
        load_fold_model(tmp_path / "future.pt")
    config = dict(data["config"])
    config["model"] = {**config["model"], "aural_channels": [6, 6]}
    atomic_torch_save({"model": data["model"], "config": config}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="weights in .*other.pt do not fit the model its config describes"):
        load_fold_model(tmp_path / "other.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="model file .*garbage.pt could not be read"):
        load_fold_model(tmp_path / "garbage.pt")


# ----------------------------------------------------------------------------- grouping by emotion


def test_runs_are_grouped_by_the_emotion_they_were_trained_for(dataset):
    models = [
        probe(tiny_config(dataset, modality=["mfcc"], emotion="valence"), nn.Identity()),
        probe(tiny_config(dataset, modality=["mfcc"], emotion="arousal", head="mh"), nn.Identity()),
        probe(tiny_config(dataset, modality=["mfcc"], emotion="both"), nn.Identity()),
    ]
    assert group_by_emotion(models) == {"valence": [0, 2], "arousal": [1, 2]}
    assert models[1].column("arousal") == 1 and models[0].column("valence") == 0
    with pytest.raises(UserError, match="no run predicts arousal: add runs trained with --emotion arousal"):
        group_by_emotion(models[:1])
    assert group_by_emotion(models[:1], allow_missing=True) == {"valence": [0]}


# ----------------------------------------------------------------------------- pure helpers


def test_align_to_frames_undoes_a_label_delay():
    outputs = np.arange(5.0)[:, None]
    assert align_to_frames(outputs, 0) is outputs
    assert align_to_frames(outputs, 2)[:, 0].tolist() == [0.0, 0.0, 0.0, 1.0, 2.0]


def test_fuse_folds_on_hand_values():
    # one fold: clipped only
    assert fuse_folds([np.array([0.5, 2.0, -3.0])]).tolist() == [0.5, 1.0, -1.0]
    # two folds: equal agreement weights, i.e. the plain average, then clipped
    fused = fuse_folds([np.array([0.25, 0.75, 0.5]), np.array([0.5, 1.75, -0.5])])
    assert np.allclose(fused, [0.375, 1.0, 0.0])
    with pytest.raises(ValueError, match="differ in length"):
        fuse_folds([np.zeros(3), np.zeros(4)])


# ----------------------------------------------------------------------------- windows


@pytest.mark.parametrize(("recipe", "mean", "std"), [("corrected", 4.0, 2.0), ("authors", 3.0, 0.5)])
def test_windows_are_overlap_averaged_and_z_scored_with_the_recipes_statistics(dataset, recipe, mean, std):
    # 12 frames, windows of 8 every 4: starts 0 and 4. Test trials: the fold's Validation_Set statistics
    # (corrected) or the test trials' own Target_Set statistics (the authors' reader, mode='test')
    config = tiny_config(dataset, modality=["mfcc"], emotion="both", window_length=8, hop_length=4, fold=[3],
                         recipe=recipe)
    mfcc = np.random.default_rng(0).normal(5, 2, (12, 39)).astype(np.float32)
    mean_std = {"mfcc": {3: {"Validation_Set": {"mean": 4.0, "std": 2.0}, "Train_Set": {"mean": 0.0, "std": 1.0},
                             "Target_Set": {"mean": 3.0, "std": 0.5}}}}
    outputs = predict_trials(probe(config, ProbeModel()), ArrayTrials({"clip": {"mfcc": mfcc}}), ["clip"],
                             mean_std, CPU)["clip"]
    assert outputs[:, 0].tolist() == [0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7]
    assert np.allclose(outputs[:, 1], (mfcc[:, 0] - mean) / std, atol=1e-6)


def test_a_trial_shorter_than_a_window_and_a_time_delay(dataset):
    config = tiny_config(dataset, modality=["mfcc"], emotion="both", window_length=8, hop_length=4, time_delay=2)
    trials = ArrayTrials({"clip": {"mfcc": np.zeros((5, 39), np.float32)}})
    mean_std = {"mfcc": {0: {"Target_Set": {"mean": 0.0, "std": 1.0}}}}
    outputs = predict_trials(probe(config, ProbeModel()), trials, ["clip"], mean_std, CPU)["clip"]
    assert outputs[:, 0].tolist() == [0, 0, 0, 1, 2]  # row t is the output of frame t - 2


class AutocastProbe(ProbeModel):
    """``ProbeModel`` that records the autocast dtype of each CPU forward (None: autocast off)."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype | None] = []

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        self.dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return super().forward(inputs)


@pytest.mark.parametrize(("precision", "expected"), [("fp32", None), ("bf16", torch.bfloat16), ("fp16", None)])
def test_a_run_predicts_in_its_training_precision_where_the_device_has_it(dataset, precision, expected):
    config = tiny_config(dataset, modality=["mfcc"], emotion="both", window_length=8, hop_length=4,
                         precision=precision)
    mean_std = {"mfcc": {0: {"Target_Set": {"mean": 0.0, "std": 1.0}}}}
    model = AutocastProbe()
    predict_trials(probe(config, model), ArrayTrials({"c": {"mfcc": np.zeros((12, 39), np.float32)}}), ["c"],
                   mean_std, CPU)
    assert model.dtypes and set(model.dtypes) == {expected}  # fp16 has no CPU autocast here: fp32


def test_predict_video_checks_the_device_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="device 'cuda' needs a GPU, but torch cannot use one here"):
        predict.main(["video", str(tmp_path / "missing.mp4"), "--runs", str(tmp_path / "no_runs"), "--output",
                      str(tmp_path / "out"), "--device", "cuda"])


def test_features_without_statistics_are_refused(dataset):
    config = tiny_config(dataset, modality=["mfcc"], emotion="valence")
    with pytest.raises(UserError, match="need the mean_std_dict.pkl of the dataset it was trained on"):
        predict_trials(probe(config, ProbeModel()), ArrayTrials({"c": {"mfcc": np.zeros((4, 39))}}), ["c"], None,
                       CPU)


# ----------------------------------------------------------------------------- fold fusion


def test_two_folds_with_known_outputs_fuse_to_their_clipped_average(dataset):
    config = tiny_config(dataset, modality=["mfcc"], emotion="valence", window_length=8, hop_length=8)
    models = [probe(config, ConstantSlopeModel(0.2, 0.0), "a"), probe(config, ConstantSlopeModel(0.4, 0.1), "b")]
    trials = ArrayTrials({"clip": {"mfcc": np.zeros((8, 39), np.float32)}})
    mean_std = {"mfcc": {0: {"Target_Set": {"mean": 0.0, "std": 1.0}}}}
    result = predict_ensemble(models, trials, ["clip"], mean_std, CPU, allow_missing_emotion=True)
    expected = np.minimum(0.3 * np.arange(8) + 0.05, 1.0)  # average of 0.2 t and 0.4 t + 0.1, clipped
    assert np.allclose(result.fused["valence"]["clip"], expected)
    assert np.isnan(result.values("clip")[:, 1]).all()


@pytest.mark.parametrize("n_folds", [2, 6])
def test_fold_fusion_through_the_prediction_path(dataset, six_valence_runs, arousal_run, n_folds):
    models = load_fold_models([*six_valence_runs[:n_folds], arousal_run])
    processed = ProcessedDataset(dataset)
    trials = processed.partition_trials("Target_Set")
    result = predict_ensemble(models, processed, trials, processed.mean_std(), CPU)
    assert result.groups == {"valence": list(range(n_folds)), "arousal": [n_folds]}
    for trial in trials:
        per_fold = np.stack([
            predict_trials(m, processed, [trial], processed.mean_std(), CPU)[trial][:, 0] for m in models[:n_folds]
        ])  # (K, n)
        assert per_fold.shape == (n_folds, processed.n_frames(trial))
        assert models[0].config.train.fold_fusion == "authors"  # the default recipe
        expected = ccc_centering(per_fold, clip=(-1.0, 1.0), style="authors")
        assert np.allclose(result.fused["valence"][trial], expected)
        values = result.values(trial)
        assert values.shape == (processed.n_frames(trial), 2) and np.all(np.abs(values) <= 1)
        # the multi-headed arousal run serves arousal with its arousal column (column 1)
        assert np.allclose(values[:, 1], np.clip(result.per_model[n_folds][trial][:, 1], -1, 1))
    if n_folds == 6:  # the folds disagree, so the agreement weights differ from a plain mean
        means = per_fold.mean(axis=1)
        agreement = [np.mean([ccc(per_fold[k], per_fold[j]) for j in range(6) if j != k]) for k in range(6)]
        assert np.ptp(agreement) > 0.01 and np.ptp(means) > 0


def test_lengths_must_match_the_videos():
    with pytest.raises(UserError, match=r"1 test trial\(s\) of database D are not in the processed dataset"):
        check_same_lengths({"a": 3}, {"a": 3, "b": 4}, "database D")
    with pytest.raises(UserError, match=r"e.g. a: 3 rows, video 5 frames"):
        check_same_lengths({"a": 3}, {"a": 5}, "database D")
    check_same_lengths({"a": 3, "extra": 2}, {"a": 3}, "database D")


# ----------------------------------------------------------------------------- predict.py validation


def test_validation_command_prints_per_run_and_merged_ccc(dataset, six_valence_runs, arousal_run, tmp_path,
                                                          capsys):
    output = tmp_path / "val_sub"
    code = predict.main(["validation", "--dataset-path", str(dataset), "--runs", str(six_valence_runs[0]),
                         str(six_valence_runs[1]), str(arousal_run), "--output", str(output), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "Validation_Set: 2 trials, partition CCC (all trials concatenated)"
    assert re.search(r"fold0_test +0 +valence +-?\d\.\d{3}  no$", out, re.MULTILINE)
    assert re.search(r"fold1_test +1 +valence +-?\d\.\d{3}  yes$", out, re.MULTILINE)
    assert re.search(r"^merged \(2 runs, CCC centering\) +valence", out, re.MULTILINE)
    assert "optimistic" in out
    summary = re.fullmatch(r"merged validation CCC: valence=(-?\d\.\d{3}) arousal=(-?\d\.\d{3})", lines[-2])
    assert summary and lines[-1] == f"wrote 2 trial files to {output}"
    # the printed figure is the CCC of the written (fused, clipped) predictions against the labels
    processed = ProcessedDataset(dataset)
    trials = processed.partition_trials("Validation_Set")
    written = np.concatenate([np.loadtxt(output / f"{t}.txt", delimiter=",", skiprows=1) for t in trials])
    labels = np.concatenate([processed.load(t, "label") for t in trials])
    assert float(summary.group(1)) == pytest.approx(ccc(written[:, 0], labels[:, 0]), abs=1e-3)
    assert float(summary.group(2)) == pytest.approx(ccc(written[:, 1], labels[:, 1]), abs=1e-3)


def test_validation_of_one_emotion_and_bad_batch_size(dataset, six_valence_runs, capsys):
    assert predict.main(["validation", "--dataset-path", str(dataset), "--runs", str(six_valence_runs[0]),
                         "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("merged validation CCC: valence=")
    with pytest.raises(UserError, match="--batch-size must be positive"):
        predict.main(["validation", "--dataset-path", str(dataset), "--runs", str(six_valence_runs[0]),
                      "--batch-size", "0"])
