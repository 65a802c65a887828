"""Trial discovery in an Aff-Wild2-style database (SPEC §1), in a deterministic (sorted) order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from base.errors import UserError

ANNOTATION_DIR = Path("annotations") / "VA_Set"
LABELED_PARTITIONS = ("Train_Set", "Validation_Set")
TEST_PARTITION = "Target_Set"  # the name the authors' training code reads in dataset_info.pkl
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
SIDE_SUFFIXES = ("_left", "_right")


@dataclass(frozen=True)
class Trial:
    name: str
    partition: str  # Train_Set, Validation_Set or Target_Set
    video: str  # video stem shared by _left/_right trials
    video_path: Path | None  # None when no video was found
    annotation_path: Path | None  # None for test trials
    face_dir: Path  # cropped_aligned/<trial>


def video_stem(trial: str) -> str:
    """``video_left`` and ``video_right`` both come from ``video``."""
    for suffix in SIDE_SUFFIXES:
        if trial.endswith(suffix):
            return trial[: -len(suffix)]
    return trial


def _index_videos(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    videos: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            videos.setdefault(path.stem, path)
    return videos


def discover_trials(root: str | Path) -> list[Trial]:
    """All trials of the database: annotated ones per partition, then test trials, each sorted by name.

    Test trials are the ``cropped_aligned`` folders that no annotation names; their videos are looked up
    in ``Test_Set/`` first, then ``raw_video/``.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"database folder {root} does not exist")
    annotation_root = root / ANNOTATION_DIR
    if not annotation_root.is_dir():
        raise UserError(f"{root} has no {ANNOTATION_DIR} folder: is this an Aff-Wild2 (VA track) database?")
    faces_root = root / "cropped_aligned"
    if not faces_root.is_dir():
        raise UserError(f"{root} has no cropped_aligned folder (the face crops of every trial)")
    raw_videos = _index_videos(root / "raw_video")
    test_videos = _index_videos(root / "Test_Set")
    trials: list[Trial] = []
    annotated: set[str] = set()
    for partition in LABELED_PARTITIONS:
        folder = annotation_root / partition
        if not folder.is_dir():
            raise UserError(f"{root} has no annotation folder {ANNOTATION_DIR / partition}")
        for path in sorted(folder.glob("*.txt")):
            name = path.stem
            annotated.add(name)
            stem = video_stem(name)
            trials.append(Trial(name, partition, stem, raw_videos.get(stem), path, faces_root / name))
    for face_dir in sorted(p for p in faces_root.iterdir() if p.is_dir() and p.name not in annotated):
        stem = video_stem(face_dir.name)
        video = test_videos.get(stem) or raw_videos.get(stem)
        trials.append(Trial(face_dir.name, TEST_PARTITION, stem, video, None, face_dir))
    if not any(t.partition in LABELED_PARTITIONS for t in trials):
        raise UserError(f"no annotation files (*.txt) found under {annotation_root}")
    return trials
