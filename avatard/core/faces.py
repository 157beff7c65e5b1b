"""Face detection with no key and no network: OpenCV's frontal-face Haar cascade, as the opencv-python wheel ships it.

Which detector, and why. ``haarcascade_frontalface_default.xml`` through ``cv2.CascadeClassifier``: both come with
the installed OpenCV 4.x (the wheel puts the cascades in ``cv2.data.haarcascades``), so presence needs no other
package, no download and no key. It finds upright frontal faces, which is what a kiosk sees of someone who walks
up to it, in ~20 ms for a 320 px picture on one busy core.

Rejected: YuNet (``cv2.FaceDetectorYN``), more accurate on turned heads, but its ONNX weights ship with no PyPI or
Debian package and nothing may be downloaded at run time; a Haar evaluator of our own over Debian's
``opencv-data`` XML (what OpenCV 5.0 would need: it moved the cascades and ``CascadeClassifier`` to
opencv_contrib), which re-implements what OpenCV does and needs a system package; opencv-contrib-python, a third
build writing the same ``cv2/`` directory as opencv-python and bithuman's opencv-python-headless; mediapipe, a
large runtime for one small model. pyproject.toml therefore pins both OpenCV builds below 5.

An OpenCV without the cascade (a 5.x that slipped in) is :class:`~avatard.errors.DetectorUnavailable`, which the
daemon reports and runs on without presence (:func:`avatard.app.make_vision`).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from ..errors import DetectorUnavailable

CASCADE_FILE = "haarcascade_frontalface_default.xml"
# Pictures are searched at this long side: a face of a person at a kiosk is 40+ px there, and the work grows
# with the square of the side.
DETECT_SIDE = 320
# The smallest face looked for, as a fraction of the picture's short side: someone at a kiosk, not a face in a
# crowd behind them. It also skips the largest (and most costly) pyramid levels.
MIN_FACE_FRACTION = 1 / 8
# detectMultiScale's pyramid step (its default, 1.1) and overlapping raw hits needed for a face (its default, 3:
# fewer is a stray texture).
SCALE_STEP = 1.1
MIN_NEIGHBORS = 3


class FaceDetector:
    """OpenCV's frontal-face cascade. ``detect`` runs in a worker thread, one call at a time (Vision sees to it)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._classifier: cv2.CascadeClassifier | None = None  # parsed on the first detect(), in its worker thread

    @classmethod
    def load(cls) -> FaceDetector:
        """The cascade from the installed OpenCV; DetectorUnavailable naming why when this OpenCV has none.

        Only checked here: parsing the 900 KB of XML takes ~20 ms, which a daemon that may never see a face
        (server mode) should not spend on its way to READY.
        """
        if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
            raise DetectorUnavailable(f"OpenCV {cv2.__version__} has no CascadeClassifier and no cascades "
                                      f"(OpenCV 5 moved them out); install opencv-python<5")
        path = cv2.data.haarcascades + CASCADE_FILE
        if not os.path.isfile(path):
            raise DetectorUnavailable(f"OpenCV {cv2.__version__} has no {path}")
        return cls(path)

    def detect(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Faces in a BGR (or grey) picture as (x, y, w, h) in its own pixels."""
        if self._classifier is None:
            self._classifier = cv2.CascadeClassifier(self._path)
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        factor = min(1.0, DETECT_SIDE / max(gray.shape))
        if factor < 1.0:
            gray = cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        smallest = int(MIN_FACE_FRACTION * min(gray.shape))
        faces = self._classifier.detectMultiScale(gray, scaleFactor=SCALE_STEP, minNeighbors=MIN_NEIGHBORS,
                                                  minSize=(smallest, smallest))
        return [tuple(int(round(v / factor)) for v in face) for face in faces]
