"""Sharded preprocessing: the assignment of videos, the shared plan, the finalize lock (no media needed)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from base.errors import EnvironmentFailure, UserError
from base.preprocessing import shards
from base.preprocessing.database import Trial
from base.preprocessing.preprocess import prepare_output


def _trials(tmp_path: Path, sizes: dict[str, int]) -> list[Trial]:
    """One trial per video, two (_left/_right) for a video whose name starts with 'two'."""
    (tmp_path / "raw_video").mkdir(exist_ok=True)
    trials = []
    for video, size in sizes.items():
        path = tmp_path / "raw_video" / f"{video}.mp4"
        path.write_bytes(b"\0" * size)
        names = [f"{video}_left", f"{video}_right"] if video.startswith("two") else [video]
        for name in names:
            trials.append(Trial(name, "Train_Set", video, path, None, tmp_path / "cropped_aligned" / name))
    return trials


def test_parse_shard_is_1_based_and_checked():
    assert shards.parse_shard("1/3") == shards.Shard(1, 3)
    assert shards.parse_shard(" 3 / 3 ") == shards.Shard(3, 3)
    assert str(shards.Shard(2, 8)) == "2/8" and shards.Shard(2, 8).results_name == "shard-002-of-008.json"
    for text in ("0/3", "4/3", "1/0"):
        with pytest.raises(UserError, match="between 1 and N"):
            shards.parse_shard(text)
    for text in ("2", "a/b", "1/2/3", "-1/2"):
        with pytest.raises(UserError, match="give I/N"):
            shards.parse_shard(text)


def test_assign_videos_by_size_hand_computed():
    # largest first, to the lighter shard: b9->1 (9,0), d7->2 (9,7), a6->2 (9,13), e5->1 (14,13), c2->2 (14,15)
    sizes = {"a": 6, "b": 9, "c": 2, "d": 7, "e": 5}
    assert shards.assign_videos(sizes, 2) == {"a": 2, "b": 1, "c": 2, "d": 2, "e": 1}
    # equal sizes: by name, round-robin like
    assert shards.assign_videos({"x": 1, "y": 1, "z": 1}, 3) == {"x": 1, "y": 2, "z": 3}
    assert shards.assign_videos({"x": 1}, 4) == {"x": 1}  # more shards than videos: some are empty


def test_plan_keeps_the_trials_of_a_video_together_and_covers_all(tmp_path):
    trials = _trials(tmp_path, {"one": 300, "two": 500, "three": 100, "four": 250})
    plan = shards.make_plan(trials, 3, {"frame_size": 48}, "weights")
    assert [t.name for t in plan.trials] == [t.name for t in trials]  # the database's order
    by_name = {t.name: t.shard for t in plan.trials}
    assert by_name["two_left"] == by_name["two_right"]
    assert sorted(t.name for s in (1, 2, 3) for t in plan.trials_of(s)) == sorted(by_name)
    assert shards.make_plan(trials, 3, {"frame_size": 48}, "weights") == plan  # deterministic


def test_record_plan_once_then_check_it(tmp_path):
    (tmp_path / "db").mkdir()
    trials = _trials(tmp_path / "db", {"one": 300, "two": 500})
    out = tmp_path / "out"
    plan = shards.make_plan(trials, 2, {"frame_size": 48}, "VGGish checkpoint /a/vggish_model.ckpt")
    assert shards.record_plan(out, plan) == plan
    assert shards.read_plan(out) == plan
    # another machine with the checkpoint elsewhere: fine, the recorded plan names the weights
    moved = shards.make_plan(trials, 2, {"frame_size": 48}, "VGGish checkpoint /b/vggish_model.ckpt")
    assert shards.record_plan(out, moved).vggish_weights == plan.vggish_weights
    with pytest.raises(UserError, match="N is 2 there, 3 here.*delete .*\\.shards to start over"):
        shards.record_plan(out, shards.make_plan(trials, 3, {"frame_size": 48}, "w"))
    with pytest.raises(UserError, match="frame_size is 48 there, 64 here"):
        shards.record_plan(out, shards.make_plan(trials, 2, {"frame_size": 64}, "w"))
    with pytest.raises(UserError, match="trials differ: 0 more here"):
        shards.record_plan(out, shards.make_plan(trials[:1], 2, {"frame_size": 48}, "w"))
    assert sorted(p.name for p in (out / shards.SHARD_DIR).iterdir()) == [shards.PLAN_NAME]  # no temp left


def test_read_plan_of_an_unsharded_output(tmp_path):
    with pytest.raises(UserError, match="holds no sharded run"):
        shards.read_plan(tmp_path)


def test_shard_results_and_the_missing_message(tmp_path):
    trials = _trials(tmp_path, {"a": 3, "b": 2, "c": 1, "two": 4})
    plan = shards.make_plan(trials, 2, {}, "w")
    shards.write_shard_results(tmp_path / "out", shards.Shard(1, 2), [{"trial": "a", "status": "ok"}])
    shards.write_shard_results(tmp_path / "out", shards.Shard(2, 2), [{"trial": "b", "status": "skipped"}])
    assert shards.read_shard_results(tmp_path / "out") == {"a": {"trial": "a", "status": "ok"},
                                                           "b": {"trial": "b", "status": "skipped"}}
    # two4->1 (4,0), a3->2 (4,3), b2->2 (4,5), c1->1 (5,5)
    assert {t.name: t.shard for t in plan.trials} == {"a": 2, "b": 2, "c": 1, "two_left": 1, "two_right": 1}
    missing = [t for t in plan.trials if t.name in ("b", "c", "two_left")]
    message = shards.missing_message(missing, plan, n_listed=1)
    assert message == "3 of 5 trials are not done: shard 1/2: 2 (c, ... (1 more)); shard 2/2: 1 (b)"


def test_finalize_lock_excludes_and_breaks_stale_locks(tmp_path):
    with shards.finalize_lock(tmp_path):
        lock = tmp_path / shards.SHARD_DIR / shards.LOCK_NAME
        assert lock.is_file()
        with pytest.raises(EnvironmentFailure, match="has been held for over"), \
                shards.finalize_lock(tmp_path, wait_s=0.3):
            pass
    assert not lock.exists()
    lock.write_text("host 1 0\n")  # left by a killed process
    old = time.time() - 1000
    os.utime(lock, (old, old))
    with shards.finalize_lock(tmp_path, wait_s=5, stale_s=300):
        assert lock.read_text().split()[1] == str(os.getpid())


def test_prepare_output_cleans_only_its_own_trials(tmp_path):
    trials = _trials(tmp_path, {"mine": 1, "theirs": 1})
    npy = tmp_path / "out" / "npy_data"
    for name in ("mine", "theirs"):
        (npy / f".tmp-{name}").mkdir(parents=True)
        (npy / f".tmp-{name}" / "frame.npy").write_bytes(b"half")
    prepare_output(tmp_path / "out", [t for t in trials if t.name == "mine"])
    assert not (npy / ".tmp-mine").exists()
    assert (npy / ".tmp-theirs" / "frame.npy").read_bytes() == b"half"  # another shard is writing it
