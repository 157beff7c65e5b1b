"""``--camera``: a camera (device index, ``/dev/video*``) or a video file read with OpenCV, feeding ``hub.see``.

``cv2.VideoCapture.read`` blocks (a device delivers a frame every 33 ms; a stalled USB camera for seconds), so it
runs in its own thread, which never waits on trio. It reads every frame (a device's buffer must be drained or its
frames grow stale), and every 1/:data:`HANDOFF_FPS` s puts the newest one in a one-frame slot and, if no wake-up
is pending, asks trio to wake the forwarding task (the microphone's pattern). A frame still in the slot when the
next one comes is replaced: newest wins, and the replaced one is counted as dropped. A video file is read at its
own frame rate, as a camera would deliver it.

The device is opened in :func:`open_capture` before the daemon starts, so a camera that cannot be opened is one
line and exit code 2. A camera that stops delivering later (unplugged, or the end of a video file) is released,
reported (``status: camera_lost``) and reopened every :data:`RETRY_SECONDS` until it works again: a video file
starts over. ``avatarctl camera off`` releases the device (its light goes out) until ``camera on``.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import cv2
import trio

from ..core.vision import PRESENCE_FPS
from ..errors import CameraError, ConfigError

logger = logging.getLogger("avatard.camera")

# Frames a second handed to the daemon: what presence detection looks at (the model takes fewer; the hub skips).
HANDOFF_FPS = PRESENCE_FPS
RETRY_SECONDS = 2.0  # between attempts to reopen a lost camera: soon enough to notice a re-plug
OFF_POLL_SECONDS = 0.2  # how often the thread looks for "camera on" (or shutdown) while off
JOIN_TIMEOUT = 2.0  # a read stuck in a dead device must not hold up shutdown; the thread is a daemon thread


def _source(spec: str):
    return int(spec) if spec.strip().isdigit() else spec


def open_capture(spec: str) -> cv2.VideoCapture:
    """Open ``spec``; CameraError (one line naming the device) when it cannot be opened or read.

    OpenCV's own warnings about the failed backends (several lines per attempt, every retry) are silenced:
    the one line that matters is ours."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        capture = cv2.VideoCapture(_source(spec))
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not capture.isOpened():
        capture.release()
        raise CameraError(f"cannot open camera {spec!r}")
    return capture


def check_camera(spec: str) -> cv2.VideoCapture:
    """The start-up check: ConfigError (exit 2, one line) for a camera that cannot be opened."""
    try:
        return open_capture(spec)
    except CameraError as exc:
        raise ConfigError(f"--camera: {exc} (is it plugged in, and may this user open it? see `v4l2-ctl "
                          f"--list-devices`)") from None


class Camera:
    name = "camera"

    def __init__(self, spec: str, capture: cv2.VideoCapture) -> None:
        self.spec = spec
        self._capture: cv2.VideoCapture | None = capture  # the thread's alone once it runs
        self._enabled = threading.Event()
        self._enabled.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _slot and _wake_pending
        self._slot = None
        self._wake_pending = False
        self._ready = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._hub = None
        self.frames_read = 0
        self.frames_dropped = 0  # replaced in the slot before the daemon took them
        self.reopens = 0

    def enable(self, on: bool) -> None:
        """Camera on/off (from the trio thread): off releases the device."""
        if on:
            self._enabled.set()
        else:
            self._enabled.clear()

    async def run(self, hub, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._hub = hub
        self._token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(target=self._read_loop, name="camera", daemon=True)
        thread.start()
        logger.info("camera: %s", self.spec)
        task_status.started()
        try:
            while True:
                await self._ready.wait()
                self._ready = trio.Event()
                with self._lock:
                    frame, self._slot = self._slot, None
                if frame is not None:
                    await hub.see(frame, "camera")
        finally:
            self._stop.set()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join, JOIN_TIMEOUT)
            logger.info("camera closed: %s", self.status())

    # -- the camera's thread -------------------------------------------------------------------------

    def _read_loop(self) -> None:
        capture = self._capture
        try:
            while not self._stop.is_set():
                if not self._enabled.is_set():
                    if capture is not None:
                        capture.release()
                        capture = None
                    self._stop.wait(OFF_POLL_SECONDS)
                    continue
                if capture is None:
                    capture = self._reopen()
                    continue
                capture = self._pump(capture)
        finally:
            if capture is not None:
                capture.release()

    def _reopen(self) -> cv2.VideoCapture | None:
        try:
            capture = open_capture(self.spec)
        except CameraError:
            self._stop.wait(RETRY_SECONDS)
            return None
        self.reopens += 1
        self._call_trio(self._hub.vision.source_back, "camera")
        return capture

    def _pump(self, capture: cv2.VideoCapture) -> cv2.VideoCapture | None:
        """Read frames until the camera fails, is turned off or the daemon stops; None when it failed."""
        # Devices pace themselves; a file is read at its own rate (frame k due at start + k / fps).
        file_fps = capture.get(cv2.CAP_PROP_FPS) if os.path.isfile(self.spec) else 0.0
        pace = 1.0 / file_fps if file_fps > 0 else 0.0
        start = time.monotonic()
        next_handoff = start
        k = 0
        while not self._stop.is_set() and self._enabled.is_set():
            ok, frame = capture.read()
            if not ok:
                capture.release()
                self._call_trio(self._hub.vision.source_lost, "camera", "no frame from the device", RETRY_SECONDS)
                self._stop.wait(RETRY_SECONDS)
                return None
            self.frames_read += 1
            k += 1
            now = time.monotonic()
            if now >= next_handoff:
                next_handoff = max(next_handoff + 1.0 / HANDOFF_FPS, now - 1.0 / HANDOFF_FPS)
                self._hand_off(frame)
            if pace:
                self._stop.wait(max(0.0, start + k * pace - time.monotonic()))
        return capture

    def _hand_off(self, frame) -> None:
        with self._lock:
            if self._slot is not None:
                self.frames_dropped += 1
            self._slot = frame
            if self._wake_pending:
                return
            self._wake_pending = True
        self._call_trio(self._wake)

    def _call_trio(self, fn, *args) -> None:
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass  # shutting down

    def _wake(self) -> None:
        # The trio thread. Cleared before waking: a frame put after this schedules a new wake-up.
        with self._lock:
            self._wake_pending = False
        self._ready.set()

    def status(self) -> dict:
        return {"device": self.spec, "enabled": self._enabled.is_set(), "frames_read": self.frames_read,
                "frames_dropped": self.frames_dropped, "reopens": self.reopens}
