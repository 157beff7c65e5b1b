"""The local window: the avatar in an OpenCV window, and the keyboard.

OpenCV's GUI (Qt in the opencv-python wheel) must live on the process's main thread, so when a window
is wanted the daemon is turned inside out: trio runs in a worker thread and the main thread runs
:meth:`Window.run`, which

- shows the frames a fan-out sink task hands over through a thread-safe slot, each when it is due:
  with a speaker, as late as the voice is (the speaker's ring plus the device's buffer), so lips and
  sound stay together; without one, at once. A window that falls behind skips pictures, it never
  shows them late;
- maps keys to the hub: ``1`` replays the audio file, ``2`` interrupts, ``3`` waves, ``q`` quits;
- handles SIGTERM and SIGINT (trio's signal receiver only works on the main thread), and quits when
  the window is closed. Quitting, whichever way, is the daemon's ordinary shutdown.

Keys and stop requests reach trio with ``trio.from_thread.run_sync``; frames reach the main thread
through the slot. Nothing else crosses between the two threads.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import signal
import socket
import threading
import time

import cv2
import numpy as np
import trio

from ..errors import ConfigError, Refused

logger = logging.getLogger("avatard.window")

TITLE = "avatard"
WAVE = "mini_wave_hello"
KEYS = {ord("1"): "replay", ord("2"): "interrupt", ord("3"): "wave", ord("q"): "quit", ord("Q"): "quit"}
SINK_BUFFER = 2  # the feed task only moves frames into the slot; it needs no more than that in flight
# Frames waiting in the slot for their moment: 0.4 s at 25 fps, well above any speaker delay (its ring
# holds at most 0.16 s); when full, the oldest go (the window is behind anyway).
SLOT_FRAMES = 10
# How long the loop waits for a new frame before turning Qt's event loop anyway (keys, close button,
# a stop request): one frame at 25 fps, so nothing waits noticeably longer than a frame would.
POLL_SECONDS = 0.04
X_CONNECT_TIMEOUT = 2.0  # a display that does not accept a connection this fast is not usable
# The opencv-python wheel's Qt looks for fonts in its own (empty) directory and complains on every
# start; point it at the system's fonts when it has not been told otherwise.
FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF")


def check_display(environ=os.environ) -> None:
    """Fail with one line unless a window can open: without this, OpenCV's Qt aborts the process (134)."""
    display = environ.get("DISPLAY")
    if not display:
        if environ.get("WAYLAND_DISPLAY"):
            raise ConfigError("no X display: the OpenCV window needs X11 (XWayland); set DISPLAY, or run with --server")
        raise ConfigError("no display: run with --server, or set DISPLAY")
    problem = _probe_x(display)
    if problem is not None:
        raise ConfigError(f"no display: cannot connect to X display {display!r} ({problem}); "
                          f"run with --server, or set DISPLAY")
    gui = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    if gui is None or gui.group(1).upper() == "NONE":
        raise ConfigError("the installed OpenCV has no GUI (opencv-python-headless shadows opencv-python): "
                          "pip install --force-reinstall --no-deps opencv-python, or run with --server")


def _probe_x(display: str) -> str | None:
    """Connect to the X server named by ``display`` (``[host]:N[.screen]``); None if it answers."""
    match = re.fullmatch(r"(?P<host>[^:]*):(?P<number>\d+)(?:\.\d+)?", display)
    if match is None:
        return "not of the form [HOST]:NUMBER"
    host, number = match.group("host"), int(match.group("number"))
    if host in ("", "unix"):
        path = f"/tmp/.X11-unix/X{number}"
        addresses = [(socket.AF_UNIX, path), (socket.AF_UNIX, "\0" + path)]  # file, then abstract namespace
    else:
        addresses = [(socket.AF_INET, (host, 6000 + number))]
    problem = None
    for family, address in addresses:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(X_CONNECT_TIMEOUT)
                sock.connect(address)
            return None
        except OSError as exc:
            problem = exc.strerror or str(exc)
    return problem


class _FrameSlot:
    """Pictures handed from the trio thread to the main thread, each with the moment it is due on screen."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._pending: collections.deque[tuple[float, np.ndarray]] = collections.deque(maxlen=SLOT_FRAMES)

    def put(self, image: np.ndarray, due: float) -> None:
        """Queue ``image`` for ``due`` (``time.monotonic()`` seconds)."""
        with self._changed:
            self._pending.append((due, image))
            self._changed.notify_all()

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def take(self, timeout: float) -> np.ndarray | None:
        """The newest picture that is due (older due ones are skipped), waiting up to ``timeout``; else None."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                now = time.monotonic()
                due = None
                while self._pending and self._pending[0][0] <= now:
                    due = self._pending.popleft()[1]
                if due is not None or now >= deadline:
                    return due
                wake_at = min(deadline, self._pending[0][0]) if self._pending else deadline
                self._changed.wait(wake_at - now)


class Window:
    name = "window"

    def __init__(self) -> None:
        self._slot = _FrameSlot()
        self._link = None  # (trio token, hub, stop) once the daemon is up: see connect()
        self._stop_reason: str | None = None
        self._ever_opened = False  # no Qt call at all before the first frame (a failed start-up never opens)
        self.frames_shown = 0
        self.keys = 0

    # -- the trio side ----------------------------------------------------------------------------

    def connect(self, hub, stop) -> None:
        """Called from the trio thread at start-up: where keys and stop requests go from now on."""
        self._link = (trio.lowlevel.current_trio_token(), hub, stop)

    async def feed(self, fanout, delay=None, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Hand frames to the window; ``delay()`` is how late the speaker plays the same frame's sound."""
        with fanout.sink("window", SINK_BUFFER) as frames:
            task_status.started()
            async for frame in frames:
                self._slot.put(frame.image, time.monotonic() + (delay() if delay is not None else 0.0))

    def flush(self) -> None:
        """Interrupt hook: nothing to drop; the picture is shown as soon as it arrives."""

    def status(self) -> dict:
        return {"frames_shown": self.frames_shown, "keys": self.keys}

    # -- the main thread --------------------------------------------------------------------------

    def run(self, daemon_main) -> None:
        """Run ``daemon_main`` (which calls ``trio.run``) in a worker thread and the window here, until it ends.

        Re-raises whatever ``daemon_main`` raised, so start-up errors surface as in headless mode.
        """
        outcome: list[BaseException] = []
        finished = threading.Event()

        def worker() -> None:
            try:
                daemon_main()
            except BaseException as exc:  # handed to the main thread, which re-raises it
                outcome.append(exc)
            finally:
                finished.set()
                self._slot.wake()

        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        thread = threading.Thread(target=worker, name="avatard-trio")
        thread.start()
        try:
            self._loop(finished)
        finally:
            # The loop ends when the daemon has; if it ended by an error instead, stop the daemon too.
            while not finished.is_set() and not self._request_stop("window loop ended"):
                finished.wait(POLL_SECONDS)
            thread.join()
            if self._ever_opened:
                cv2.destroyAllWindows()
                cv2.waitKey(1)  # lets Qt process the destruction before the interpreter tears down
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if outcome:
            raise outcome[0]

    def _on_signal(self, signum, frame) -> None:
        # Runs on the main thread between bytecodes: only record it; the loop acts within one period.
        self._stop_reason = f"got {signal.Signals(signum).name}"

    def _loop(self, finished: threading.Event) -> None:
        opened = False
        stopping = False
        while not finished.is_set():
            if self._stop_reason is not None and not stopping:
                stopping = self._request_stop(self._stop_reason)
            image = self._slot.take(POLL_SECONDS)
            if stopping:
                # Quitting: keep Qt's event loop turning but show nothing new (imshow would reopen a closed window).
                if opened:
                    cv2.waitKey(1)
                continue
            if image is not None:
                if not opened:
                    _use_system_fonts()
                    cv2.namedWindow(TITLE, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
                    opened = self._ever_opened = True
                    logger.info("window %r open (keys: 1 replay audio file, 2 interrupt, 3 wave, q quit)", TITLE)
                cv2.imshow(TITLE, image)
                self.frames_shown += 1
            if not opened:
                continue
            key = cv2.waitKey(1)
            if key != -1 and (key & 0xFF) in KEYS:
                self._key(KEYS[key & 0xFF])
            if not _visible():
                self._stop_reason = "window closed"
                opened = False  # Qt has destroyed it: no more waitKey on it

    def _key(self, action: str) -> None:
        self.keys += 1
        if action == "quit":
            self._stop_reason = "quit key"
            return
        if self._link is None:
            return
        token, hub, _ = self._link
        try:
            trio.from_thread.run_sync(_key_action, hub, action, trio_token=token)
        except trio.RunFinishedError:
            pass

    def _request_stop(self, reason: str) -> bool:
        """Ask trio to shut down. False if it is not connected yet (the loop retries)."""
        if self._link is None:
            return False
        token, _, stop = self._link
        try:
            trio.from_thread.run_sync(stop, reason, trio_token=token)
        except trio.RunFinishedError:
            pass
        return True


def _key_action(hub, action: str) -> None:
    """Runs in the trio thread: the key's effect, through the hub like every other front end."""
    try:
        if action == "replay":
            hub.replay("keyboard")
        elif action == "interrupt":
            hub.interrupt("keyboard")
        elif action == "wave":
            hub.gesture(WAVE, "keyboard")
    except Refused as exc:
        logger.warning("key %s: %s", action, exc)


def _visible() -> bool:
    # Closing the last window makes Qt drop OpenCV's GUI receiver; asking then raises instead of saying 0.
    try:
        return cv2.getWindowProperty(TITLE, cv2.WND_PROP_VISIBLE) >= 1
    except cv2.error:
        return False


def _use_system_fonts() -> None:
    qt_fonts = os.path.join(os.path.dirname(cv2.__file__), "qt", "fonts")
    if "QT_QPA_FONTDIR" in os.environ or os.path.isdir(qt_fonts) or not os.path.isdir(os.path.dirname(qt_fonts)):
        return
    for directory in FONT_DIRS:
        if os.path.isdir(directory):
            os.environ["QT_QPA_FONTDIR"] = directory
            return
