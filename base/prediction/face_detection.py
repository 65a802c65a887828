"""Per-frame face detection and the 48x48 face crops of any video (issue 7).

Three detectors, chosen by name (``Detector``):

* ``haar``: OpenCV's frontal-face Haar cascade, whose XML ships inside ``opencv-python``
  (``cv2.data.haarcascades``). No landmarks, so no alignment. Runs in this process.
* ``mtcnn``: the ``mtcnn`` package (weights inside its wheel; TensorFlow). Its five landmarks level
  the eyes (in-plane rotation). It always runs in a *spawned* process, because TensorFlow must not
  share a process with openSMILE (the openSMILE library crashes when TensorFlow was imported first).
* ``openface``: the 68 landmarks of an OpenFace ``FeatureExtraction`` CSV (``base.preprocessing.openface``): the face
  box is their bounding box, the eye centres level the crop, ``success`` says whether a face was found.

A face crop is a square around the face box (its longer side times a margin, centred on the box),
rotated so that the eyes are level when landmarks are known, and resized to ``size`` x ``size`` RGB;
what falls outside the picture is black. A frame without a face gives a black crop, as in training
(SPEC §1: missing ``cropped_aligned`` jpgs become black frames). When several faces are found, the
largest is kept.
"""

from __future__ import annotations

import enum
import logging
import math
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from base.errors import UserError

logger = logging.getLogger(__name__)

FACE_SIZE = 48  # side of the stored crops (FeatureConfig.frame_size)
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
DETECTION_BATCH = 32  # frames handed to a detector at once (MTCNN is several times faster in batches)


class Detector(enum.StrEnum):
    """Face detectors by command-line name."""

    HAAR = "haar"
    MTCNN = "mtcnn"
    OPENFACE = "openface"


# How much larger than the detector's box the square crop is. A Haar box already spans brows to chin;
# MTCNN's box and the landmarks' bounding box are tighter (no forehead), so they get more.
DEFAULT_MARGIN = {Detector.HAAR: 1.1, Detector.MTCNN: 1.3, Detector.OPENFACE: 1.3}

# 68-point layout (OpenFace, iBUG): points 36-41 outline the left eye in the image, 42-47 the right eye
LEFT_EYE_POINTS = slice(36, 42)
RIGHT_EYE_POINTS = slice(42, 48)


@dataclass(frozen=True)
class FaceBox:
    """A face in a frame: its box in pixels (top-left corner, size), the eye-levelling angle, a score."""

    x: float
    y: float
    width: float
    height: float
    angle_deg: float = 0.0  # counter-clockwise rotation of the picture that levels the eyes
    score: float = 1.0

    @property
    def area(self) -> float:
        return self.width * self.height


@dataclass(frozen=True, eq=False)
class FaceTrack:
    """The faces of a video: one crop per frame (black where none was found)."""

    faces: np.ndarray  # (n_frames, size, size, 3) uint8 RGB
    found: np.ndarray  # (n_frames,) bool

    def __len__(self) -> int:
        return len(self.found)


# ----------------------------------------------------------------------------- geometry (pure)


def eye_angle_deg(left_eye: Sequence[float], right_eye: Sequence[float]) -> float:
    """Angle of the line between the eyes, degrees; rotating the picture by it levels the eyes.

    The eye with the smaller x is taken as the first, whatever the names say.

    >>> round(eye_angle_deg((10, 10), (30, 30)), 3), eye_angle_deg((30, 5), (10, 5))
    (45.0, 0.0)
    """
    (x0, y0), (x1, y1) = sorted([tuple(map(float, left_eye)), tuple(map(float, right_eye))])
    return math.degrees(math.atan2(y1 - y0, x1 - x0))


def square_region(box: FaceBox, margin: float) -> tuple[float, float, float]:
    """Centre (x, y) and side of the square crop of ``box``: its longer side times ``margin``.

    >>> square_region(FaceBox(10, 20, 40, 60), 1.5)
    (30.0, 50.0, 90.0)
    """
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    return box.x + box.width / 2, box.y + box.height / 2, max(box.width, box.height) * margin


def crop_face(frame: np.ndarray, box: FaceBox, size: int = FACE_SIZE, margin: float = 1.0) -> np.ndarray:
    """The square face crop of ``box``, rotated by ``box.angle_deg`` and resized to ``size``.

    Args:
        frame: (H, W, 3) uint8 picture (any channel order; it is kept).
        box: the face.
        size: output side, pixels.
        margin: crop side / longer box side.

    Returns:
        (size, size, 3) uint8; black where the square leaves the picture.
    """
    centre_x, centre_y, side = square_region(box, margin)
    side_px = max(1, int(round(side)))
    # pixel centres sit at integer coordinates: the continuous centre (cx, cy) is pixel (cx - .5, cy - .5)
    matrix = cv2.getRotationMatrix2D((centre_x - 0.5, centre_y - 0.5), box.angle_deg, 1.0)  # (2, 3)
    matrix[0, 2] += side_px / 2 - centre_x
    matrix[1, 2] += side_px / 2 - centre_y
    patch = cv2.warpAffine(frame, matrix, (side_px, side_px), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))  # (side, side, 3)
    interpolation = cv2.INTER_AREA if side_px > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def largest_face(boxes: Sequence[FaceBox]) -> FaceBox | None:
    """The box with the largest area, or None when there is none."""
    return max(boxes, key=lambda box: box.area, default=None)


def landmark_box(landmarks: np.ndarray) -> FaceBox:
    """The bounding box of 68 landmarks (68, 2) [x, y], levelled by the eye centres."""
    x_min, y_min = landmarks.min(axis=0)
    x_max, y_max = landmarks.max(axis=0)
    angle = eye_angle_deg(landmarks[LEFT_EYE_POINTS].mean(axis=0), landmarks[RIGHT_EYE_POINTS].mean(axis=0))
    return FaceBox(float(x_min), float(y_min), float(x_max - x_min), float(y_max - y_min), angle)


# ----------------------------------------------------------------------------- detectors


class HaarDetector:
    """OpenCV's Haar cascade on the grey, histogram-equalised frame.

    Args:
        scale_factor: image pyramid step.
        min_neighbors: overlapping detections needed to keep a face.
        min_size_fraction: smallest face side as a fraction of the frame's shorter side (at least 20 px).
    """

    name = Detector.HAAR

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size_fraction: float = 0.08) -> None:
        path = Path(cv2.data.haarcascades) / HAAR_CASCADE
        self._classifier = cv2.CascadeClassifier(str(path))
        if self._classifier.empty():
            raise UserError(f"OpenCV's face cascade {path} could not be loaded; reinstall opencv-python-headless")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size_fraction = min_size_fraction

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        """Faces of one (H, W, 3) RGB frame."""
        grey = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
        min_side = max(20, int(self.min_size_fraction * min(grey.shape)))
        found = self._classifier.detectMultiScale(grey, scaleFactor=self.scale_factor,
                                                  minNeighbors=self.min_neighbors, minSize=(min_side, min_side))
        return [FaceBox(float(x), float(y), float(w), float(h)) for x, y, w, h in np.reshape(found, (-1, 4))]

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[list[FaceBox]]:
        return [self.detect(frame) for frame in frames]


class MtcnnDetector:
    """The ``mtcnn`` package's detector with five landmarks (imports TensorFlow: use in a spawned process).

    Args:
        min_confidence: detections below this score are dropped.
    """

    name = Detector.MTCNN

    def __init__(self, min_confidence: float = 0.9) -> None:
        try:
            from mtcnn import MTCNN
        except ImportError as exc:
            raise UserError(f"--detector mtcnn needs the mtcnn package (pip install mtcnn==1.0.0): {exc}") from None
        self._mtcnn = MTCNN()
        self.min_confidence = min_confidence

    def _boxes(self, results: list[dict]) -> list[FaceBox]:
        boxes = []
        for result in results:
            if float(result.get("confidence", 0.0)) < self.min_confidence:
                continue
            x, y, w, h = (float(v) for v in result["box"])
            keypoints = result.get("keypoints") or {}
            angle = 0.0
            if "left_eye" in keypoints and "right_eye" in keypoints:
                angle = eye_angle_deg(keypoints["left_eye"], keypoints["right_eye"])
            boxes.append(FaceBox(x, y, w, h, angle, float(result["confidence"])))
        return boxes

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        """Faces of one (H, W, 3) RGB frame."""
        return self._boxes(self._mtcnn.detect_faces(np.ascontiguousarray(frame)))

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[list[FaceBox]]:
        """Faces of several frames of the same size (one batched pass)."""
        if not frames:
            return []
        results = self._mtcnn.detect_faces([np.ascontiguousarray(f) for f in frames])
        return [self._boxes(list(r)) for r in results]


# ----------------------------------------------------------------------------- videos


def read_frames(video_path: str | Path) -> Iterator[np.ndarray]:
    """The decoded frames of a video, (H, W, 3) uint8 RGB, in order.

    Raises:
        UserError: OpenCV cannot open the file.
    """
    capture = cv2.VideoCapture(str(video_path))
    if not capture.isOpened():
        raise UserError(f"cannot read video {video_path}: OpenCV cannot open it")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def crop_video_faces(
    video_path: str | Path,
    n_frames: int,
    find_faces: Callable[[list[np.ndarray], int], list[FaceBox | None]],
    size: int = FACE_SIZE,
    margin: float = 1.0,
    batch_size: int = DETECTION_BATCH,
    quiet: bool = True,
) -> FaceTrack:
    """Crop the face of every frame of a video.

    Args:
        video_path: the video.
        n_frames: the frame count to produce (``base.preprocessing.media.probe_video``); decoded frames past it are
            ignored, missing ones have no face.
        find_faces: (frames, index of the first) -> the face of each frame, or None.
        size: crop side; margin: crop side / longer box side.
        batch_size: frames per ``find_faces`` call.
        quiet: hide the progress bar.
    """
    faces = np.zeros((n_frames, size, size, 3), np.uint8)
    found = np.zeros(n_frames, bool)
    decoded = 0
    batch: list[np.ndarray] = []

    def flush(first: int) -> None:
        for offset, (frame, box) in enumerate(zip(batch, find_faces(batch, first))):
            if box is not None:
                faces[first + offset] = crop_face(frame, box, size, margin)
                found[first + offset] = True
        batch.clear()

    progress = tqdm(total=n_frames, desc="faces", unit="frame", leave=False, disable=quiet)
    for frame in read_frames(video_path):
        if decoded >= n_frames:
            decoded += 1
            continue
        batch.append(frame)
        decoded += 1
        if len(batch) == batch_size:
            flush(decoded - len(batch))
            progress.update(batch_size)
    progress.update(len(batch))
    flush(min(decoded, n_frames) - len(batch))
    progress.close()
    if decoded < n_frames:
        logger.warning("%s: decoded %d frames of %d; the last %d have no face", video_path, decoded, n_frames,
                       n_frames - decoded)
    elif decoded > n_frames:
        logger.warning("%s: decoded %d frames, more than the %d counted; the extra ones are ignored", video_path,
                       decoded, n_frames)
    return FaceTrack(faces=faces, found=found)


def _detector_faces(detector: HaarDetector | MtcnnDetector) -> Callable[[list[np.ndarray], int], list[FaceBox | None]]:
    return lambda frames, _first: [largest_face(boxes) for boxes in detector.detect_batch(frames)]


def _detect_in_this_process(video_path: str, detector_name: str, n_frames: int, size: int, margin: float,
                            quiet: bool) -> FaceTrack:
    detector = HaarDetector() if detector_name == Detector.HAAR else MtcnnDetector()
    return crop_video_faces(video_path, n_frames, _detector_faces(detector), size, margin, quiet=quiet)


def detect_video_faces(
    video_path: str | Path,
    n_frames: int,
    detector: Detector | str = Detector.HAAR,
    size: int = FACE_SIZE,
    margin: float | None = None,
    quiet: bool = True,
) -> FaceTrack:
    """Detect and crop the face of every frame with ``haar`` (here) or ``mtcnn`` (in a spawned process).

    Args:
        margin: crop side / longer box side; default ``DEFAULT_MARGIN`` of the detector.
    """
    detector = Detector(detector)
    if detector is Detector.OPENFACE:
        raise ValueError("OpenFace faces come from its CSV: use openface_faces")
    margin = DEFAULT_MARGIN[detector] if margin is None else margin
    if detector is Detector.HAAR:
        return _detect_in_this_process(str(video_path), detector.value, n_frames, size, margin, quiet)
    # TensorFlow never enters this process (openSMILE may live here): the detector runs in a fresh one
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_detect_in_this_process, str(video_path), detector.value, n_frames, size, margin,
                           True).result()


def openface_faces(
    video_path: str | Path,
    n_frames: int,
    landmarks: np.ndarray,
    success: np.ndarray,
    size: int = FACE_SIZE,
    margin: float | None = None,
    quiet: bool = True,
) -> FaceTrack:
    """Crop every frame's face from OpenFace's landmarks.

    Args:
        landmarks: (n_frames, 68, 2) landmark pixels per video frame ([x, y]).
        success: (n_frames,) whether OpenFace found the face.
        margin: default ``DEFAULT_MARGIN['openface']``.
    """
    margin = DEFAULT_MARGIN[Detector.OPENFACE] if margin is None else margin
    if len(landmarks) != n_frames or len(success) != n_frames:
        raise ValueError(f"expected {n_frames} landmark rows, got {len(landmarks)} and {len(success)}")

    def boxes(frames: list[np.ndarray], first: int) -> list[FaceBox | None]:
        return [landmark_box(landmarks[first + k]) if success[first + k] else None for k in range(len(frames))]

    return crop_video_faces(video_path, n_frames, boxes, size, margin, quiet=quiet)
