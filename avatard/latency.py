"""Turn latency: end of user input -> first model audio -> first lip-synced frame out.

The brain marks the first two moments, the renderer the third; the meter publishes one ``latency``
event per turn and keeps the last one for ``avatarctl status``.
"""

from __future__ import annotations

import trio

from .events import EventBus


class LatencyMeter:
    def __init__(self, events: EventBus) -> None:
        self._events = events
        self._input_end: float | None = None
        self._first_audio: float | None = None
        self.last: dict | None = None

    def user_input_ended(self, ago: float = 0.0) -> None:
        """The user finished a turn now (or ``ago`` seconds ago, when detected after a pause)."""
        self._input_end = trio.current_time() - ago
        self._first_audio = None

    def model_audio(self) -> None:
        if self._input_end is not None and self._first_audio is None:
            self._first_audio = trio.current_time()

    def frame_out(self) -> None:
        """Called by the renderer for the first speaking frame of a turn."""
        if self._input_end is None:
            return
        now = trio.current_time()
        first_audio = self._first_audio if self._first_audio is not None else now
        self.last = {
            "input_to_audio_ms": round((first_audio - self._input_end) * 1000, 1),
            "audio_to_frame_ms": round((now - first_audio) * 1000, 1),
            "total_ms": round((now - self._input_end) * 1000, 1),
        }
        self._input_end = self._first_audio = None
        self._events.publish("latency", **self.last)

    def cancel(self) -> None:
        self._input_end = self._first_audio = None
