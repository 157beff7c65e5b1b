"""What the avatar sees: camera frames and operator stills, to the brain and to presence detection.

Every picture, whatever its source (the local camera, a browser's camera, ``avatarctl look``), comes through here,
so the rules are in one place:

- pictures are scaled to at most MAX_IMAGE_SIDE px and JPEG-encoded here, in a worker thread;
- the brain gets at most ``--camera-fps`` pictures a second (at most 1: Gemini Live's limit) and only while the
  camera is on; a camera frame that comes too soon is skipped, one that finds the shared input lane full is
  dropped (counted); an operator's still goes in the operator's lane instead, since it was asked for;
- a brain that cannot see (the offline one) is sent nothing, and presence still works;
- faces are looked for in at most PRESENCE_FPS pictures a second (:mod:`.faces`, :mod:`.presence`); with no
  detector (an OpenCV without the cascade) presence is reported unavailable, and a camera frame that nothing
  can use (the brain cannot see either) is refused, naming why;
- a picture that would be neither sent nor examined now is not even decoded (:meth:`Vision.wants`), so a
  browser sending frames too fast costs little.

Pictures are never written anywhere or logged: they live in memory until sent.

The camera state is published as ``status`` events (``camera_off``, ``camera_on``, ``camera_sending`` while
frames reach the model, ``camera_lost`` while a device is being retried); :meth:`Vision.run` notices when frames
stop.
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np
import trio

from ..constants import MAX_IMAGE_SIDE
from ..errors import Busy, Refused
from .events import EventBus
from .input_lanes import InputLanes
from .messages import CameraFrame
from .presence import Change, Presence

logger = logging.getLogger("avatard.vision")

# Pictures a second examined for faces (a detection takes ~20 ms of one core, plus decoding): an arrival is
# noticed within about a second, and the box keeps most of its CPU for the avatar.
PRESENCE_FPS = 2.0
# The camera counts as sending while a frame went to the model this recently (at 1 frame/s: two missed frames).
SENDING_SECONDS = 2.5
# How often run() re-checks the sending indicator.
STATE_CHECK_SECONDS = 0.5
JPEG_QUALITY = 80  # the model reads labels in it; 768 px at 80 is ~60-120 KB


def scaled(image: np.ndarray) -> np.ndarray:
    """``image`` shrunk (never enlarged) so its long side is at most MAX_IMAGE_SIDE."""
    factor = MAX_IMAGE_SIDE / max(image.shape[:2])
    if factor >= 1.0:
        return image
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)


def encode_jpeg(image: np.ndarray) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise Refused("the picture could not be encoded as JPEG")
    return jpeg.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    """A JPEG/PNG/... file's bytes as a BGR picture, scaled; Refused (naming why) when it is not one."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise Refused("not an image OpenCV can decode (send a JPEG or PNG)")
    return scaled(image)


class Vision:
    name = "camera"

    def __init__(self, *, events: EventBus, inputs: InputLanes, brain_sees: bool, fps: float, detector=None,
                 presence: Presence | None = None, no_detector: str | None = None) -> None:
        self._events = events
        self._inputs = inputs
        self.brain_sees = brain_sees
        self._interval = 1.0 / fps
        self._detector = detector  # faces.FaceDetector, or None: no presence detection
        self.presence = presence
        self._no_detector = no_detector  # why there is no detector, for status and refusals
        self.on = True
        self.lost: str | None = None  # why a camera is gone, while it is retried
        self.state = "on"
        self._next_send = -math.inf
        self._last_sent = -math.inf
        self._next_detect = -math.inf
        self._detecting = False
        self.frames_seen = 0
        self.frames_sent = 0  # to the brain, camera frames and stills
        self.frames_skipped = 0  # came sooner than --camera-fps allows (or while off)
        self.frames_dropped = 0  # the brain's input queue was full

    # -- pictures --------------------------------------------------------------------------------------

    def wants(self, source: str) -> bool:
        """Whether a camera frame arriving now would be sent or examined; Refused when none ever could be."""
        if not self.brain_sees and self._detector is None:
            raise Refused(f"camera frames are of no use here: this brain cannot see pictures and presence "
                          f"detection is unavailable ({self._no_detector})")
        now = trio.current_time()
        if self.on and ((self.brain_sees and now >= self._next_send)
                        or (self._detector is not None and not self._detecting and now >= self._next_detect)):
            return True
        self.frames_skipped += 1
        return False

    async def frame(self, image: np.ndarray, source: str) -> Change | None:
        """A camera frame (BGR): to the brain if due, to presence detection if due. Returns a presence change."""
        if not self.on:
            self.frames_skipped += 1
            return None
        self.frames_seen += 1
        image = scaled(image)
        now = trio.current_time()
        if self.brain_sees and now >= self._next_send:
            self._next_send = now + self._interval
            jpeg = await trio.to_thread.run_sync(encode_jpeg, image)
            try:
                # Lossy: a camera frame that cannot be queued now is stale by the time there is room.
                self._inputs.put_nowait(CameraFrame(jpeg, source))
            except Busy:
                self.frames_dropped += 1
            else:
                self._sent()
        elif self.brain_sees:
            self.frames_skipped += 1
        return await self._detect(image, now, source)

    async def still(self, image: np.ndarray, source: str) -> None:
        """An operator's still (``avatarctl look``): sent whether or not the camera is on, in its turn."""
        if not self.brain_sees:
            raise Refused("this brain cannot see pictures (the offline brain); use the Gemini brain")
        jpeg = await trio.to_thread.run_sync(encode_jpeg, image)
        await trio.sleep_until(self._next_send)
        self._next_send = trio.current_time() + self._interval
        self._inputs.put_operator(CameraFrame(jpeg, source))  # asked for: refused (Busy) if the lane is full
        self._sent()

    def _sent(self) -> None:
        self.frames_sent += 1
        self._last_sent = trio.current_time()
        self._update_state()

    async def _detect(self, image: np.ndarray, now: float, source: str) -> Change | None:
        if self._detector is None or self._detecting or now < self._next_detect:
            return None
        self._next_detect = now + 1.0 / PRESENCE_FPS
        self._detecting = True  # one detection at a time, whichever sources send pictures
        try:
            faces = await trio.to_thread.run_sync(self._detector.detect, image)
        finally:
            self._detecting = False
        change = self.presence.update(len(faces), trio.current_time())
        if change is not None:
            self._events.publish("presence", presence=change.kind, faces=change.faces, source=source,
                                 **({"greet": change.greet} if change.kind == "arrived" else {}))
        return change

    # -- camera state ----------------------------------------------------------------------------------

    def set_on(self, on: bool, source: str) -> None:
        self.on = on
        logger.info("camera %s by %s", "on" if on else "off", source)
        if not on:
            self._last_sent = -math.inf
        self._update_state()

    def source_lost(self, source: str, reason: str, retry: float) -> None:
        self.lost = reason
        logger.warning("camera %s lost (%s); retrying every %.0f s", source, reason, retry)
        self._update_state(source=source, reason=reason, retry_s=retry)

    def source_back(self, source: str) -> None:
        if self.lost is not None:
            logger.info("camera %s is back", source)
        self.lost = None
        self._update_state()

    def _update_state(self, **extra) -> None:
        if not self.on:
            state = "off"
        elif self.lost is not None:
            state = "lost"
        elif trio.current_time() - self._last_sent < SENDING_SECONDS:
            state = "sending"
        else:
            state = "on"
        if state != self.state:
            self.state = state
            self._events.publish("status", status=f"camera_{state}", **extra)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep the indicator true when frames stop coming (a browser closed its camera, a device stalled)."""
        task_status.started()
        while True:
            await trio.sleep(STATE_CHECK_SECONDS)
            self._update_state()

    def status(self) -> dict:
        return {"camera": self.state, "camera_to_model": self.state == "sending",
                "camera_frames_seen": self.frames_seen, "camera_frames_sent": self.frames_sent,
                "camera_frames_skipped": self.frames_skipped, "camera_frames_dropped": self.frames_dropped,
                **({"presence": self.presence.status()} if self.presence is not None
                   else {"presence_unavailable": self._no_detector})}
