"""IDE use: every script runs with no arguments once its paths are set in configs.py or a config file.

(preprocessing.py's no-argument run is in tests/test_later_releases.py, on the demo database.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import calculate_mean_and_std
import configs
import main
import predict
from base.data.processed import MEAN_STD
from base.errors import UserError, run_cli
from tests.prediction_helpers import save_run, tiny_config
from tests.processed_helpers import make_processed_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config_file(tmp_path: Path, values: dict, monkeypatch) -> Path:
    path = tmp_path / "my_settings.json"
    path.write_text(json.dumps(values))
    monkeypatch.setenv(configs.CONFIG_FILE_ENV, str(path))
    return path


def test_the_environment_names_the_default_config_file(tmp_path, monkeypatch):
    monkeypatch.delenv(configs.CONFIG_FILE_ENV, raising=False)
    assert configs.default_config_file() == ""
    in_configs = tmp_path / "in_configs.yaml"
    in_configs.write_text("dataset_path: /from/configs\n")
    monkeypatch.setattr(configs, "DEFAULT_CONFIG_FILE", str(in_configs))  # what an IDE user edits
    assert configs.load_config().train.dataset_path == "/from/configs"
    _config_file(tmp_path, {"dataset_path": "/from/env"}, monkeypatch)
    assert configs.load_config().train.dataset_path == "/from/env"
    # --config wins over the default file, flags win over both
    explicit = tmp_path / "explicit.json"
    explicit.write_text(json.dumps({"dataset_path": "/explicit", "stamp": "x"}))
    assert configs.load_config(str(explicit)).train.dataset_path == "/explicit"
    config = main.parse_config(["--config", str(explicit), "--dataset-path", "/flag"])
    assert (config.train.dataset_path, config.train.stamp) == ("/flag", "x")
    assert main.parse_config([]).train.dataset_path == "/from/env"
    monkeypatch.setenv(configs.CONFIG_FILE_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(UserError, match="missing.json does not exist"):
        configs.load_config()


def test_statistics_and_submission_without_arguments(tmp_path, monkeypatch, capsys):
    dataset = make_processed_dataset(tmp_path / "data", n_train=5, n_val=1, n_test=2, lengths=(12, 16, 9),
                                     modalities=("mfcc", "egemaps", "vggish"), with_mean_std=False)
    runs = tmp_path / "runs"
    for emotion in ("valence", "arousal"):
        save_run(runs, tiny_config(dataset, modality=["mfcc"], emotion=emotion), 0)
    submission = tmp_path / "sub"
    _config_file(tmp_path, {"dataset_path": str(dataset), "save_path": str(runs),
                            "submission_path": str(submission)}, monkeypatch)

    assert run_cli(calculate_mean_and_std.main, ["--quiet"]) == 0
    assert (dataset / MEAN_STD).is_file()
    assert run_cli(predict.main, []) == 0  # the test command, every path from the config file
    assert sorted(p.name for p in submission.iterdir()) == ["test_000.txt", "test_001.txt"]
    assert run_cli(predict.main, ["validate", "--quiet"]) == 0  # submission_path and dataset_path again
    assert "valid" in capsys.readouterr().out


def test_statistics_without_any_path_says_what_to_set(monkeypatch, capsys):
    monkeypatch.delenv(configs.CONFIG_FILE_ENV, raising=False)
    assert run_cli(calculate_mean_and_std.main, []) == 2
    assert "set dataset_path in configs.py or a config file" in capsys.readouterr().err
