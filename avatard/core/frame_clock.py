"""The renderers' clock: one tick every 1/fps seconds, with presentation times on the wall clock."""

from __future__ import annotations

import logging
import time

import trio

logger = logging.getLogger("avatard.clock")

# Further behind than this (a stalled CPU, a debugger, a late SDK frame), the clock skips ahead instead
# of rushing out a burst of frames that would all be late anyway; skipped ticks are counted.
MAX_LAG_FRAMES = 5


class FrameClock:
    def __init__(self, fps: int, name: str) -> None:
        self._period = 1.0 / fps
        self._name = name
        self._start = trio.current_time()
        self._wall_offset = time.time() - self._start
        self._tick = 0
        self.skipped = 0

    async def next_tick(self) -> tuple[int, float]:
        """Sleep until the next tick is due; return its index and presentation time (epoch seconds)."""
        deadline = self._start + self._tick * self._period
        await trio.sleep_until(deadline)
        lag = trio.current_time() - deadline
        if lag > MAX_LAG_FRAMES * self._period:
            # The tick due now, not the one before it: lag/period of an exact multiple can come out as
            # 14.999999999999998 in floating point, and truncating that would return a stale tick and
            # then burst the due one right after it. The nudge is a millionth of a period.
            skip = int(lag / self._period + 1e-6)
            self.skipped += skip
            self._tick += skip
            deadline = self._start + self._tick * self._period
            logger.warning("%s fell %.0f ms behind; skipped %d ticks", self._name, lag * 1000, skip)
        tick = self._tick
        self._tick += 1
        return tick, deadline + self._wall_offset
