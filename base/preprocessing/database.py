"""Trial discovery in an Aff-Wild2-style database (SPEC §1), in a deterministic (sorted) order.

Two layouts are recognised without being told which:

- ABAW2 (2021, the paper's): ``annotations/VA_Set/{Train_Set,Validation_Set}/*.txt``, videos in
  ``raw_video/`` and ``Test_Set/``; the test trials are the ``cropped_aligned`` folders that no
  annotation names.
- the later releases (ABAW3 in 2022 and after): ``<N>th ABAW Annotations/VA_Estimation_Challenge/
  {Train_Set,Validation_Set}/`` (teams also keep it as ``annotations/VA_Estimation_Challenge``),
  videos spread over several folders (``batch1/``, ``batch2/``, later additions), and a
  ``cropped_aligned/`` that holds the faces of every video of every challenge. Its VA test set is
  the organisers' list (``Valence_Arousal_Estimation_Challenge_test_set_release.txt``: one trial name
  per line, no header), given as ``test_list``.

``DatabaseLayout`` overrides the search: an explicit annotation folder, the folders that hold the
videos (default: the whole database, ``cropped_aligned/`` skipped) and the test list.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from base.errors import UserError

log = logging.getLogger(__name__)

ANNOTATION_DIR = Path("annotations") / "VA_Set"  # ABAW2
VA_CHALLENGE_DIR = "VA_Estimation_Challenge"  # later releases: <N>th ABAW Annotations/VA_Estimation_Challenge
FACES_DIR = "cropped_aligned"
TEST_LIST_NAME = "Valence_Arousal_Estimation_Challenge_test_set_release.txt"  # the organisers' file name
LABELED_PARTITIONS = ("Train_Set", "Validation_Set")
TEST_PARTITION = "Target_Set"  # the name the authors' training code reads in dataset_info.pkl
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
SIDE_SUFFIXES = ("_left", "_right")
ANNOTATION_SEARCH_DEPTH = 3  # folder levels below the root searched for the annotation folder


@dataclass(frozen=True)
class Trial:
    name: str
    partition: str  # Train_Set, Validation_Set or Target_Set
    video: str  # video stem shared by _left/_right trials
    video_path: Path | None  # None when no video was found
    annotation_path: Path | None  # None for test trials
    face_dir: Path  # cropped_aligned/<trial>


@dataclass(frozen=True)
class DatabaseLayout:
    """Where a database keeps its parts; empty fields are searched for (the ``FeatureConfig`` fields)."""

    annotations: str = ""  # the VA folder holding Train_Set/ and Validation_Set/
    video_dirs: tuple[str, ...] = ()  # folders searched recursively for videos (default: the root)
    test_list: str = ""  # the organisers' test-set list file

    @classmethod
    def of(cls, features) -> DatabaseLayout:
        """The layout a ``configs.FeatureConfig`` describes."""
        return cls(features.annotations, tuple(features.video_dirs), features.test_list)


def video_stem(trial: str) -> str:
    """``video_left`` and ``video_right`` both come from ``video``."""
    for suffix in SIDE_SUFFIXES:
        if trial.endswith(suffix):
            return trial[: -len(suffix)]
    return trial


# ----------------------------------------------------------------------------- annotations


def _has_partitions(folder: Path) -> bool:
    return all((folder / partition).is_dir() for partition in LABELED_PARTITIONS)


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and p.name != FACES_DIR and not p.name.startswith("."))
    except OSError:
        return []


def _resolve_given(root: Path, given: str) -> Path:
    path = Path(given)
    if not path.is_absolute() and not path.exists() and (root / path).exists():
        path = root / path
    return path


def find_annotation_dir(root: Path, given: str = "") -> Path:
    """The VA annotation folder: ``given``, else ``annotations/VA_Set`` or a ``VA_Estimation_Challenge``
    folder (with ``Train_Set/`` and ``Validation_Set/``) at most ``ANNOTATION_SEARCH_DEPTH`` levels down."""
    if given:
        folder = _resolve_given(root, given)
        missing = [p for p in LABELED_PARTITIONS if not (folder / p).is_dir()]
        if missing:
            raise UserError(f"annotation folder {folder} has no {' or '.join(missing)} folder: give the folder "
                            f"that holds Train_Set/ and Validation_Set/ (e.g. .../{VA_CHALLENGE_DIR})")
        return folder
    found = [root / ANNOTATION_DIR] if _has_partitions(root / ANNOTATION_DIR) else []
    level = [root]
    for _ in range(ANNOTATION_SEARCH_DEPTH):
        level = [child for folder in level for child in _subfolders(folder)]
        found += [folder for folder in level if folder.name == VA_CHALLENGE_DIR and _has_partitions(folder)]
    if not found:
        raise UserError(
            f"no VA annotations found in {root}: expected {ANNOTATION_DIR}/{{Train_Set,Validation_Set}} (ABAW2) or "
            f"'<N>th ABAW Annotations/{VA_CHALLENGE_DIR}/{{Train_Set,Validation_Set}}' (later releases); "
            f"or pass --annotations DIR"
        )
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(root)) for p in found)
        raise UserError(f"{root} holds several VA annotation folders ({names}); choose one with --annotations DIR")
    return found[0]


# ----------------------------------------------------------------------------- videos


def index_videos(folders: Iterable[Path]) -> dict[str, Path]:
    """Video stem -> path of every video under ``folders`` (recursively, ``cropped_aligned`` and hidden
    folders skipped), walked in sorted order; a stem found twice keeps its first path, with a warning."""
    videos: dict[str, Path] = {}
    duplicates: dict[str, list[Path]] = {}
    for top in folders:
        for current, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d != FACES_DIR and not d.startswith("."))
            for filename in sorted(filenames):
                path = Path(current) / filename
                if path.suffix.lower() not in VIDEO_EXTENSIONS:
                    continue
                if path.stem in videos and videos[path.stem] != path:
                    duplicates.setdefault(path.stem, [videos[path.stem]]).append(path)
                    continue
                videos[path.stem] = path
    if duplicates:
        stem, paths = next(iter(duplicates.items()))
        log.warning("%d video name(s) are found in more than one folder, the first path is used (e.g. %s: %s)",
                    len(duplicates), stem, ", ".join(map(str, paths)))
    return videos


def video_folders(root: Path, given: Sequence[str] = ()) -> list[Path]:
    """The folders searched for videos: ``given`` (relative ones also tried under ``root``), else ``root``."""
    if not given:
        return [root]
    folders = [_resolve_given(root, folder) for folder in given]
    missing = [str(folder) for folder in folders if not folder.is_dir()]
    if missing:
        raise UserError(f"video folder(s) {', '.join(missing)} do not exist (--video-dirs)")
    return folders


# ----------------------------------------------------------------------------- test trials


def read_test_list(path: str | Path) -> list[str]:
    """Trial names of the organisers' test-set list: one per line, no header; blank lines ignored."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the test list {path}: {exc}") from None
    names = [line.strip() for line in lines if line.strip()]
    for name in names:
        if "," in name or "/" in name or " " in name:
            raise UserError(f"test list {path.name}: {name!r} is not a trial name; give the list of test trial "
                            f"names, one per line (e.g. {TEST_LIST_NAME}), not a prediction-format sample file")
    if not names:
        raise UserError(f"test list {path} holds no trial name")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise UserError(f"test list {path.name} names {duplicated[0]} more than once")
    return names


def listed_test_trials(faces_root: Path, annotated: set[str], test_list: str, later_release: bool) -> list[str]:
    """The test trials: the listed names, or (no list) the ``cropped_aligned`` folders no annotation names."""
    unannotated = sorted(p.name for p in faces_root.iterdir() if p.is_dir() and p.name not in annotated)
    if not test_list:
        if later_release and unannotated:
            log.warning("%d cropped_aligned folders have no VA annotation and become test trials; in this later "
                        "ABAW release cropped_aligned also holds the other challenges' videos: pass --test-list %s",
                        len(unannotated), TEST_LIST_NAME)
        return unannotated
    names = read_test_list(test_list)
    labeled = [name for name in names if name in annotated]
    if labeled:
        raise UserError(f"test list {Path(test_list).name} names {labeled[0]}, which has a VA annotation "
                        f"({len(labeled)} such names): is it the list of the VA challenge?")
    no_faces = [name for name in names if not (faces_root / name).is_dir()]
    if no_faces:
        log.warning("%d listed test trial(s) have no cropped_aligned folder (e.g. %s): their frames will be black",
                    len(no_faces), no_faces[0])
    ignored = len(set(unannotated) - set(names))
    if ignored:
        log.info("%d cropped_aligned folders are neither annotated nor in the test list (other challenges): ignored",
                 ignored)
    return sorted(names)


# ----------------------------------------------------------------------------- trials


def discover_trials(root: str | Path, layout: DatabaseLayout | None = None) -> list[Trial]:
    """All trials of the database: annotated ones per partition, then test trials, each sorted by name."""
    root = Path(root)
    layout = layout or DatabaseLayout()
    if not root.is_dir():
        raise UserError(f"database folder {root} does not exist")
    annotation_root = find_annotation_dir(root, layout.annotations)
    faces_root = root / FACES_DIR
    if not faces_root.is_dir():
        raise UserError(f"{root} has no {FACES_DIR} folder (the face crops of every trial)")
    videos = index_videos(video_folders(root, layout.video_dirs))
    trials: list[Trial] = []
    annotated: set[str] = set()
    for partition in LABELED_PARTITIONS:
        for path in sorted((annotation_root / partition).glob("*.txt")):
            name = path.stem
            annotated.add(name)
            stem = video_stem(name)
            trials.append(Trial(name, partition, stem, videos.get(stem), path, faces_root / name))
    if not trials:
        raise UserError(f"no annotation files (*.txt) found under {annotation_root}")
    later_release = annotation_root.name == VA_CHALLENGE_DIR
    for name in listed_test_trials(faces_root, annotated, layout.test_list, later_release):
        stem = video_stem(name)
        trials.append(Trial(name, TEST_PARTITION, stem, videos.get(stem), None, faces_root / name))
    return trials
