"""What every renderer reports about its frames: speaking/listening changes and per-frame events.

Shared by the built-in and the bitHuman renderer so both speak the same event stream.
"""

from __future__ import annotations

import numpy as np

from ..constants import FRAME_KIND
from ..core.events import EventBus
from ..core.latency import LatencyMeter
from ..core.messages import Frame

# After this many frames with no speech and no end of turn, a turn is considered over (the brain
# stalled, or the SDK swallowed samples); the avatar then reports "listening" again.
IDLE_AFTER_FRAMES = 12


class SpeakingTracker:
    def __init__(self, events: EventBus, latency: LatencyMeter) -> None:
        self._events = events
        self._latency = latency
        self._quiet_frames = 0
        self.speaking = False

    def frame(self, real_samples: int, turn_over: bool) -> bool:
        """Account for one frame with ``real_samples`` of speech; True when the avatar just stopped."""
        if real_samples:
            self._quiet_frames = 0
            if not self.speaking:
                self.speaking = True
                self._latency.frame_out()
                self._events.publish("status", status="speaking")
            return False
        self._latency.silent_frame_out()
        self._quiet_frames += 1
        if self.speaking and (turn_over or self._quiet_frames >= IDLE_AFTER_FRAMES):
            self.speaking = False
            self._events.publish("status", status="listening")
            return True
        return False


def publish_frame(events: EventBus, frame: Frame) -> None:
    """The ``frame`` event (level, mouth, gesture) for subscribers that asked for it; cheap otherwise."""
    if events.wants(FRAME_KIND):
        rms = float(np.sqrt(np.mean(frame.audio.astype(np.float64) ** 2)))
        events.publish(FRAME_KIND, index=frame.index, pts=frame.timestamp, rms=round(rms, 1), mouth=round(frame.mouth, 3),
                       speaking=frame.speaking, gesture=frame.gesture, generation=frame.generation)
