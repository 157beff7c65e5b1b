"""Face detection with no key and no network: OpenCV's trained frontal-face Haar cascade, evaluated here.

Which detector, and why. The installed OpenCV (5.0, opencv-python 5.0.0.93) ships no face model at all: Haar
and HOG moved to opencv_contrib's xobjdetect (opencv/opencv#25198, "Move all Haar/LBP models to opencv_contrib";
opencv-python#1259: no ``cv2.CascadeClassifier``) and the wheel's ``cv2/data`` is empty (opencv-python#1244).
``cv2.FaceDetectorYN`` (YuNet) is there, but its ONNX weights ship with no PyPI or Debian package, and nothing
may be downloaded at run time. Rejected: opencv-contrib-python (a third build writing the same ``cv2/`` directory
as opencv-python and bithuman's opencv-python-headless: whichever pip wrote last would win), mediapipe (a large
runtime for one tiny model).

So: ``haarcascade_frontalface_default.xml``, OpenCV's own cascade (the file opencv-python 4.x shipped in
``cv2.data``), from Debian's ``opencv-data`` package (/usr/share/opencv4/haarcascades), evaluated with OpenCV's
integral images and numpy the way OpenCV's ``HaarEvaluator`` does (modules/objdetect/src/cascadedetect.cpp,
4.x): a fixed 24x24 window slid over an image pyramid; each window's feature sums are compared with
``threshold * sqrt(area * sqsum - sum^2)`` over the window shrunk by one pixel; a stage passes when its leaf
values sum to at least its threshold. Frontal faces, upright, from 1/8 of the picture's short side up:
what a kiosk sees of someone who walks up to it. Cost on a 2-core box: ~0.1 s for a 320 px picture.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree

import attrs
import cv2
import numpy as np

from ..errors import ConfigError

# Where Debian's opencv-data puts OpenCV's cascades (scripts/test and the Dockerfile install it).
CASCADE_DIRS = ("/usr/share/opencv4/haarcascades", "/usr/share/opencv/haarcascades")
CASCADE_FILE = "haarcascade_frontalface_default.xml"
INSTALL_HINT = "apt-get install opencv-data"
# Pictures are searched at this long side: a face of a person at a kiosk is 40+ px there, and the work grows
# with the square of the side.
DETECT_SIDE = 320
# The smallest face looked for, as a fraction of the picture's short side: someone at a kiosk, not a face in a
# crowd behind them. The pyramid starts at the scale where the 24 px window is that big, which skips the
# largest (and most costly) levels: ~0.1 s instead of ~0.5 s per picture.
MIN_FACE_FRACTION = 1 / 8
# Pyramid step (OpenCV's detectMultiScale default is 1.1; 1.2 halves the work and still finds a face at one of
# the neighbouring scales). STRIDE: windows are tried every 2 pixels at each scale.
SCALE_STEP = 1.2
STRIDE = 2
# Raw windows that overlap one face; fewer is a stray texture (OpenCV's minNeighbors, default 3).
MIN_NEIGHBORS = 3


@attrs.frozen
class _Stage:
    threshold: float
    rects: np.ndarray  # (n, 3, 5) int: x, y, w, h, weight of each weak classifier's rectangles
    thresholds: np.ndarray  # (n,)
    left: np.ndarray  # (n,) leaf value when feature < threshold * norm
    right: np.ndarray  # (n,)


class HaarCascade:
    """A parsed OpenCV cascade (the "new" XML format, stumps only, no tilted features)."""

    def __init__(self, path: str) -> None:
        root = ElementTree.parse(path).getroot().find("cascade")
        self.width = int(root.findtext("width"))
        self.height = int(root.findtext("height"))
        rect_lists = []
        for feature in root.find("features"):
            if (feature.findtext("tilted") or "0").strip() != "0":
                raise ValueError(f"{path}: tilted features are not supported")
            rect_lists.append([[float(v) for v in r.text.split()] for r in feature.find("rects")])
        # Every feature as 3 rectangles (x, y, w, h, weight); two-rectangle features get an empty third.
        # The weights are whole numbers (-1, 2, 3) in OpenCV's cascades, so integers hold them exactly.
        padded = np.zeros((len(rect_lists), 3, 5))
        for i, feature_rects in enumerate(rect_lists):
            padded[i, :len(feature_rects)] = feature_rects
        rects = padded
        self.stages = []
        for stage in root.find("stages"):
            nodes = [node.findtext("internalNodes").split() for node in stage.find("weakClassifiers")]
            leaves = np.array([node.findtext("leafValues").split() for node in stage.find("weakClassifiers")], float)
            features = [int(n[2]) for n in nodes]
            self.stages.append(_Stage(float(stage.findtext("stageThreshold")), rects[features].astype(np.int64),
                                      np.array([float(n[3]) for n in nodes]), leaves[:, 0], leaves[:, 1]))

    def _windows(self, gray: np.ndarray) -> np.ndarray:
        """Top-left corners (y, x) of the windows of ``gray`` (one pyramid level) that pass every stage."""
        h, w = gray.shape
        if h < self.height or w < self.width:
            return np.zeros((0, 2), int)
        total, squares = cv2.integral2(gray, sdepth=cv2.CV_64F, sqdepth=cv2.CV_64F)
        ys, xs = np.mgrid[0:h - self.height + 1:STRIDE, 0:w - self.width + 1:STRIDE]
        ys, xs = ys.ravel(), xs.ravel()

        def box(table, y, x, rh, rw):
            return table[y + rh, x + rw] - table[y, x + rw] - table[y + rh, x] + table[y, x]

        # The window shrunk by one pixel on each side, as HaarEvaluator's normrect.
        nh, nw = self.height - 2, self.width - 2
        s = box(total, ys + 1, xs + 1, nh, nw)
        sq = box(squares, ys + 1, xs + 1, nh, nw)
        norm = nh * nw * sq - s * s
        norm = np.where(norm > 0, np.sqrt(np.maximum(norm, 0)), 1.0)
        for stage in self.stages:
            # Every weak classifier of the stage at once: (windows, classifiers, 3 rectangles).
            r = stage.rects
            y0, x0 = ys[:, None, None] + r[..., 1], xs[:, None, None] + r[..., 0]
            sums = box(total, y0, x0, r[..., 3], r[..., 2])
            value = (sums * r[..., 4]).sum(axis=2)
            score = np.where(value < stage.thresholds * norm[:, None], stage.left, stage.right).sum(axis=1)
            keep = score >= stage.threshold
            ys, xs, norm = ys[keep], xs[keep], norm[keep]
            if not len(ys):
                break
        return np.stack([ys, xs], axis=1)

    def detect(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Faces in a BGR (or gray) picture as (x, y, w, h) in its own pixels, after grouping overlapping hits."""
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        factor = min(1.0, DETECT_SIDE / max(gray.shape))
        if factor < 1.0:
            gray = cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        hits = []
        scale = max(1.0, MIN_FACE_FRACTION * min(gray.shape) / min(self.width, self.height))
        while min(gray.shape[0] / scale, gray.shape[1] / scale) >= max(self.width, self.height):
            level = cv2.resize(
                gray, (int(gray.shape[1] / scale), int(gray.shape[0] / scale)), interpolation=cv2.INTER_LINEAR)
            for y, x in self._windows(level):
                hits.append([x * scale, y * scale, self.width * scale, self.height * scale])
            scale *= SCALE_STEP
        return [tuple(int(round(v / factor)) for v in box) for box in _group(hits)]


def _group(boxes: list[list[float]]) -> list[list[float]]:
    """Merge overlapping raw hits as cv2.groupRectangles does: similar boxes clustered and averaged, small clusters
    dropped, and a box inside a bigger one dropped (the same face found at two scales). Two boxes are similar when
    their corners differ by at most 20 % of their size."""
    clusters: list[list[list[float]]] = []
    for box in boxes:
        for cluster in clusters:
            ref = np.mean(cluster, axis=0)
            delta = 0.2 * (min(ref[2], box[2]) + min(ref[3], box[3])) / 2
            if all(abs(a - b) <= delta for a, b in zip(
                    (ref[0], ref[1], ref[0] + ref[2], ref[1] + ref[3]),
                    (box[0], box[1], box[0] + box[2], box[1] + box[3]))):
                cluster.append(box)
                break
        else:
            clusters.append([box])
    grouped = [np.mean(c, axis=0) for c in clusters if len(c) >= MIN_NEIGHBORS]
    return [list(box) for box in grouped if not any(
        other is not box and other[2] > box[2]
        and other[0] <= box[0] + box[2] / 2 <= other[0] + other[2]
        and other[1] <= box[1] + box[3] / 2 <= other[1] + other[3] for other in grouped)]


def load_face_cascade() -> HaarCascade:
    """The frontal-face cascade; ConfigError (one line, naming the package to install) when it is missing."""
    for directory in CASCADE_DIRS:
        path = os.path.join(directory, CASCADE_FILE)
        if os.path.isfile(path):
            return HaarCascade(path)
    raise ConfigError(f"--camera: presence detection needs OpenCV's face cascade {CASCADE_FILE} "
                      f"(looked in {', '.join(CASCADE_DIRS)}): {INSTALL_HINT}")
