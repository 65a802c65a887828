"""The OpenFace modalities (flm: landmark.npy, fau: au.npy) train like the other followers (SPEC §9)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import main
from base.errors import run_cli
from tests.processed_helpers import make_processed_dataset

CCC_LINE = re.compile(r"validation CCC: arousal=(-?[0-9.]+)")


@pytest.mark.slow
@pytest.mark.parametrize("modality", [["mfcc", "flm", "fau"], ["fau"], ["flm"]])
def test_short_training_run_with_openface_modalities(tmp_path: Path, modality: list[str], capsys) -> None:
    dataset = make_processed_dataset(tmp_path / "data", n_train=5, n_val=2, n_test=1,
                                     modalities=("mfcc", "flm", "fau"), seed=1)
    argv = ["--dataset-path", str(dataset), "--save-path", str(tmp_path / "runs"), "--fold", "0",
            "--emotion", "arousal", "--modality", *modality, "--num-epochs", "2", "--window-length", "16",
            "--hop-length", "8", "--batch-size", "4", "--learning-rate", "1e-3", "--quiet"]
    assert run_cli(main.main, argv) == 0
    match = CCC_LINE.search(capsys.readouterr().out)
    assert match and -1 <= float(match.group(1)) <= 1
    run = next((tmp_path / "runs").iterdir())
    assert ("-".join(modality)) in run.name


def test_missing_openface_arrays_are_a_clear_error(tmp_path: Path, capsys) -> None:
    dataset = make_processed_dataset(tmp_path / "data", n_train=5, n_val=2, n_test=1, modalities=("mfcc",))
    argv = ["--dataset-path", str(dataset), "--save-path", str(tmp_path / "runs"), "--modality", "mfcc", "flm",
            "--num-epochs", "1", "--quiet"]
    assert run_cli(main.main, argv) == 2
    err = capsys.readouterr().err
    assert "landmark.npy" in err and "Traceback" not in err


def test_help_lists_the_openface_modalities(capsys) -> None:
    with pytest.raises(SystemExit):
        main.main(["--help"])
    out = capsys.readouterr().out
    assert "flm" in out and "fau" in out
