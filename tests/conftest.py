"""Shared fixtures: tiny real media made on the fly (ffmpeg-encoded videos with sound, jpg folders with
gaps, annotation files) and a small demo database, built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from base.preprocessing.opensmile_features import import_opensmile  # noqa: E402

# openSMILE must be loaded before any test imports TensorFlow (the other order crashes the process).
import_opensmile()

from base.preprocessing import demo  # noqa: E402
from configs import DemoConfig  # noqa: E402
from tests.shared_work import build_once  # noqa: E402


def _share_the_cores_among_workers() -> None:
    """Under pytest-xdist each worker gets its share of the cores for torch: N workers with all cores'
    threads each would oversubscribe the machine and run every model several times slower."""
    n_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if n_workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_workers))


_share_the_cores_among_workers()

TINY_FPS = 10.0
TINY_SAMPLE_RATE = 16000

# A demo small enough for the test suite: 4 + 1 + 1 short videos (5 training trials: one video has
# two people), the fewest that 6-fold cross-validation accepts.
SMALL_DEMO = DemoConfig(demo_n_train_videos=4, demo_n_validation_videos=1, demo_n_test_videos=1,
                        demo_min_seconds=4.0, demo_max_seconds=6.0)


def make_tiny_video(path: Path, seconds: float = 3.0, fps: float = TINY_FPS, with_audio: bool = True,
                    seed: int = 0) -> np.ndarray:
    """Encode a real video of a face with a voice; returns its (n_frames, 2) labels."""
    rng = np.random.default_rng(seed)
    n_frames = int(round(seconds * fps))
    labels = demo.make_labels(rng, n_frames, fps)
    identity = demo.random_identity(rng)
    frames = np.stack([demo.render_face(float(v), float(a), 96, identity) for v, a in labels])
    audio = demo.synthesize_voice(labels, fps, TINY_SAMPLE_RATE, rng) if with_audio else None
    container = path.suffix.lstrip(".")
    demo.encode_video(frames, audio, TINY_SAMPLE_RATE, fps, path, container)
    return labels


def write_annotation_file(path: Path, rows: list[str], header: str = "valence,arousal") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def tiny_mp4(tmp_path: Path) -> Path:
    """A 3-second 10 fps mp4 (libx264 + aac) with an audio track."""
    path = tmp_path / "tiny.mp4"
    make_tiny_video(path)
    return path


@pytest.fixture
def tiny_avi(tmp_path: Path) -> Path:
    """A 3-second 10 fps avi (mpeg4 + mp3) with an audio track."""
    path = tmp_path / "tiny.avi"
    make_tiny_video(path, seed=1)
    return path


@pytest.fixture
def jpg_folder(tmp_path: Path) -> tuple[Path, list[int]]:
    """A cropped_aligned-style folder of 10 frames (112x112) whose jpgs 3 and 7 (1-based) are missing."""
    import cv2

    folder = tmp_path / "cropped_aligned" / "trial"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    identity = demo.random_identity(rng)
    missing = [3, 7]
    for number in range(1, 11):
        if number not in missing:
            cv2.imwrite(str(folder / f"{number:05d}.jpg"), demo.render_face(0.1 * number - 0.5, 0.0, 112, identity))
    return folder, missing


@pytest.fixture
def annotation_file(tmp_path: Path) -> Path:
    """A 6-row annotation with a -5 row."""
    rows = ["0.1,0.2", "0.2,0.3", "-5,-5", "0.4,-0.1", "-0.5,0.5", "1,-1"]
    return write_annotation_file(tmp_path / "trial.txt", rows)


@pytest.fixture(scope="session")
def demo_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo database (4 train videos incl. a two-person one, 1 validation, 1 test), built once
    for all workers; read-only (copy it to change it)."""
    folder, _ = build_once(tmp_path_factory, "small_demo",
                           lambda folder: str(demo.make_demo_database(folder / "Affwild2", SMALL_DEMO, quiet=True)))
    return folder / "Affwild2"


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    """Each script run configures the root logger (``setup_logging``); put it back after every test, so
    that what a test prints does not depend on which test ran before it on the same worker."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a test module, restored after: tiny models run fastest on one
    thread, and two spinning OpenMP threads ran them ~3x slower on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def vggish_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same random VGGish weights (seed 0) as the release's single file (``v1``) and as a V2 prefix
    (``v2``): two 288 MB checkpoints that TensorFlow writes (imported here: use in slow tests only)."""
    from vggish.checkpoint import write_random_checkpoint

    formats = ("v1", "v2")

    def build(root: Path) -> None:
        for fmt in formats:
            write_random_checkpoint(root / fmt / "vggish_model.ckpt", seed=0, checkpoint_format=fmt)

    root, _ = build_once(tmp_path_factory, "random_vggish_checkpoints", build)  # once for all workers
    return {fmt: root / fmt / "vggish_model.ckpt" for fmt in formats}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Heaviest first: ``heavy``, then ``slow``, then the rest, each in collection order. Under
    ``--dist loadgroup --no-loadscope-reorder`` the workers take tests in this order, so the demo
    trainings start at once on different workers instead of ending the run on one of them."""

    def weight(item: pytest.Item) -> int:
        if item.get_closest_marker("heavy"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=weight)  # stable
