"""The Aff-Wild2 releases of later ABAW years: annotations and videos found under either layout, the test
set from the organisers' list, and the demo database in both layouts preprocessing to the same arrays."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import preprocessing
from base.errors import UserError, run_cli
from base.preprocessing import demo
from base.preprocessing.database import (
    TEST_LIST_NAME,
    TEST_PARTITION,
    DatabaseLayout,
    discover_trials,
    read_test_list,
)
from base.safe_pickle import load_pickle
from configs import CONFIG_FILE_ENV, DemoConfig
from tests.conftest import write_annotation_file

LATER_VA = Path("6th ABAW Annotations") / "VA_Estimation_Challenge"


def _later_database(root: Path, with_list: bool = True) -> Path:
    """Hand-made later-release layout: VA annotations, two video batches, faces of other challenges."""
    for partition, trials in (("Train_Set", ["b", "a_left", "a_right"]), ("Validation_Set", ["c"])):
        for trial in trials:
            write_annotation_file(root / LATER_VA / partition / f"{trial}.txt", ["0,0"])
            (root / "cropped_aligned" / trial).mkdir(parents=True)
    write_annotation_file(root / "6th ABAW Annotations/EXPR_Recognition_Challenge/Train_Set/x.txt", ["0"],
                          header="Neutral,Anger")
    for folder, names in (("batch1", ["a.mp4", "t.avi"]), ("batch2", ["b.avi", "c.mp4", "x.mp4"])):
        (root / folder).mkdir()
        for name in names:
            (root / folder / name).write_bytes(b"")
    for trial in ("t", "x", "y"):  # t: the VA test trial; x, y: faces of other challenges' videos
        (root / "cropped_aligned" / trial).mkdir()
    (root / "cropped_aligned" / "t" / "ignored.mp4").write_bytes(b"")  # cropped_aligned is never searched
    if with_list:
        (root / TEST_LIST_NAME).write_text("t\n\n")
    return root


def test_later_layout_is_discovered_with_the_test_list(tmp_path):
    root = _later_database(tmp_path / "db")
    trials = discover_trials(root, DatabaseLayout(test_list=str(root / TEST_LIST_NAME)))
    assert [(t.name, t.partition) for t in trials] == [
        ("a_left", "Train_Set"), ("a_right", "Train_Set"), ("b", "Train_Set"), ("c", "Validation_Set"),
        ("t", TEST_PARTITION),
    ]
    by_name = {t.name: t for t in trials}
    assert by_name["a_left"].video_path == root / "batch1" / "a.mp4"
    assert by_name["b"].video_path == root / "batch2" / "b.avi"
    assert by_name["t"].video_path == root / "batch1" / "t.avi"
    assert by_name["c"].annotation_path == root / LATER_VA / "Validation_Set" / "c.txt"


def test_without_a_list_the_old_rule_holds_and_warns_in_the_later_layout(tmp_path, caplog):
    root = _later_database(tmp_path / "db", with_list=False)
    with caplog.at_level(logging.WARNING):
        trials = discover_trials(root)
    assert [t.name for t in trials if t.partition == TEST_PARTITION] == ["t", "x", "y"]
    assert "3 cropped_aligned folders have no VA annotation" in caplog.text and "--test-list" in caplog.text


def test_explicit_annotations_and_video_folders(tmp_path):
    root = _later_database(tmp_path / "db")
    layout = DatabaseLayout(annotations=str(LATER_VA), video_dirs=("batch2",), test_list=str(root / TEST_LIST_NAME))
    by_name = {t.name: t for t in discover_trials(root, layout)}
    assert by_name["b"].video_path == root / "batch2" / "b.avi"
    assert by_name["a_left"].video_path is None  # batch1 was not named
    with pytest.raises(UserError, match="do not exist"):
        discover_trials(root, DatabaseLayout(video_dirs=("batch9",)))
    with pytest.raises(UserError, match="has no Train_Set or Validation_Set folder"):
        discover_trials(root, DatabaseLayout(annotations=str(root / LATER_VA / "Train_Set")))
    write_annotation_file(root / "annotations/VA_Set/Train_Set/b.txt", ["0,0"])
    (root / "annotations/VA_Set/Validation_Set").mkdir()
    with pytest.raises(UserError, match="several VA annotation folders .*--annotations"):
        discover_trials(root)


def test_bad_test_lists(tmp_path):
    root = _later_database(tmp_path / "db")
    sample = tmp_path / "sample.txt"
    sample.write_text("image_location,valence,arousal\nt/00001.jpg,,\n")
    with pytest.raises(UserError, match="not a trial name.*prediction-format sample file"):
        read_test_list(sample)
    annotated = tmp_path / "list.txt"
    annotated.write_text("t\nb\n")
    with pytest.raises(UserError, match="names b, which has a VA annotation"):
        discover_trials(root, DatabaseLayout(test_list=str(annotated)))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UserError, match="holds no trial name"):
        read_test_list(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="cannot read the test list"):
        read_test_list(tmp_path / "missing.txt")


def test_a_video_in_two_folders_warns(tmp_path, caplog):
    root = _later_database(tmp_path / "db")
    (root / "batch2" / "a.mp4").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        by_name = {t.name: t for t in discover_trials(root, DatabaseLayout(test_list=str(root / TEST_LIST_NAME)))}
    assert by_name["a_left"].video_path == root / "batch1" / "a.mp4"
    assert "1 video name(s) are found in more than one folder" in caplog.text


def test_the_abaw3_demo_layout(tmp_path):
    """The later-layout demo holds the same files as the ABAW2 one, moved, plus the other challenge's faces."""
    config = DemoConfig(demo_n_train_videos=1, demo_n_validation_videos=1, demo_n_test_videos=1,
                        demo_min_seconds=1.0, demo_max_seconds=1.4)
    old = demo.make_demo_database(tmp_path / "abaw2", config, quiet=True)
    new = demo.make_demo_database(tmp_path / "abaw3", DemoConfig(**{**config.__dict__, "demo_layout": "abaw3"}),
                                  quiet=True)
    assert not (new / "annotations").exists() and not (new / "raw_video").exists()
    assert sorted(p.name for p in (new / "batch1").iterdir()) and sorted(p.name for p in (new / "batch2").iterdir())
    test_list = new / "names_of_videos_in_each_test_set" / TEST_LIST_NAME
    old_trials = [(t.name, t.partition, t.video_path.read_bytes(), t.annotation_path and t.annotation_path.read_text())
                  for t in discover_trials(old)]
    new_trials = [(t.name, t.partition, t.video_path.read_bytes(), t.annotation_path and t.annotation_path.read_text())
                  for t in discover_trials(new, DatabaseLayout(test_list=str(test_list)))]
    assert old_trials == new_trials
    faces = sorted(p.name for p in (new / "cropped_aligned").iterdir())
    assert len(faces) == len(old_trials) + demo.N_OTHER_CHALLENGE_FOLDERS
    with pytest.raises(UserError, match="demo_layout"):
        demo.make_demo_database(tmp_path / "bad", DemoConfig(demo_layout="abaw9"), quiet=True)


# ----------------------------------------------------------------------------- end to end (slow)

TINY_DEMO = DemoConfig(demo_n_train_videos=1, demo_n_validation_videos=1, demo_n_test_videos=1,
                       demo_min_seconds=4.0, demo_max_seconds=5.0)


@pytest.fixture(scope="module")
def two_layouts(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("layouts")
    old = demo.make_demo_database(root / "abaw2", TINY_DEMO, quiet=True)
    new = demo.make_demo_database(root / "abaw3", DemoConfig(**{**TINY_DEMO.__dict__, "demo_layout": "abaw3"}),
                                  quiet=True)
    return old, new


def _arrays(output: Path) -> dict[str, bytes]:
    return {str(p.relative_to(output)): p.read_bytes() for p in sorted((output / "npy_data").rglob("*.npy"))}


@pytest.mark.slow
def test_ide_run_without_arguments_and_both_layouts_give_the_same_arrays(two_layouts, tmp_path, monkeypatch):
    old, new = two_layouts
    old_out = tmp_path / "abaw2_processed"
    assert run_cli(preprocessing.main, ["--database", str(old), "--output", str(old_out), "--quiet"]) == 0

    # IDE use: the paths are config defaults (here from a config file named by the environment), no arguments
    new_out = tmp_path / "abaw3_processed"
    config_file = tmp_path / "my_paths.json"
    config_file.write_text(json.dumps({
        "database_path": str(new), "dataset_path": str(new_out),
        "test_list": str(new / "names_of_videos_in_each_test_set" / TEST_LIST_NAME),
    }))
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config_file))
    assert run_cli(preprocessing.main, []) == 0

    old_info, new_info = load_pickle(old_out / "dataset_info.pkl"), load_pickle(new_out / "dataset_info.pkl")
    assert new_info["partition"] == old_info["partition"]
    assert len(new_info["partition"][TEST_PARTITION]) == 1  # the other challenges' folders are not test trials
    old_arrays, new_arrays = _arrays(old_out), _arrays(new_out)
    assert old_arrays.keys() == new_arrays.keys() and len(old_arrays) == 3 * 5 - 1  # test trial: no label
    for name, content in old_arrays.items():
        assert new_arrays[name] == content, name
    assert np.load(new_out / "npy_data" / next(iter(new_info["partition"]["Train_Set"])) / "label.npy").shape[1] == 2


def test_no_paths_is_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)
    with pytest.raises(SystemExit):  # argparse's usage error
        preprocessing.main([])
    assert "give --database DIR and --output OUT" in capsys.readouterr().err
