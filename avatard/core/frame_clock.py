"""The renderers' clock: one tick every 1/fps seconds, with presentation times on the wall clock.

The grid's phase is arbitrary, so waiting for the next tick would add up to one period (40 ms at 25 fps)
to the first word of an answer and to every interrupt. :meth:`FrameClock.rephase` moves it instead: the
next tick is due at once (speech arriving while the avatar is idle, an interrupt), and the 1/fps grid goes
on from that moment. Each event costs at most one short interval; frames still carry exactly RATE/fps
samples, indices and timestamps still increase strictly, and over any second there are at most fps
frames plus one per event. A burst of events cannot turn into a burst of frames: a re-phased tick is never
closer than :data:`MIN_GAP_FRACTION` of a period to the re-phased tick before it. It may follow a regular
tick at once: the event that lands just after a tick (one in eight, at a random phase) would otherwise wait
up to 5 ms, and the sinks take two frames in a row like any other two (each has its own samples and
timestamp; the speaker drops queued idle silence when speech starts). So no two consecutive intervals are
both shorter than the minimum gap.

An event may also be announced for later (:meth:`FrameClock.rephase` with ``at``): speech whose first chunk is
short of a frame re-phases when the rest has come or, at the latest, then.

Rejected: rendering an extra frame on each event while keeping the grid. It doubles the frames of a busy
second and still leaves the following frames on the old phase.
"""

from __future__ import annotations

import logging
import math
import time

import trio

logger = logging.getLogger("avatard.clock")

# Further behind than this (a stalled CPU, a debugger, a late SDK frame), the clock skips ahead instead
# of rushing out a burst of frames that would all be late anyway; skipped ticks are counted.
MAX_LAG_FRAMES = 5
# The shortest interval between two re-phased ticks (5 ms at 25 fps): a flood of interrupts is at most
# 8 frames per period, each carrying its own samples.
MIN_GAP_FRACTION = 0.125
# After a regular tick, a re-phased one comes at once but never at the same instant (timestamps increase
# strictly, with room to spare for epoch floats, which resolve ~0.2 us): 40 us at 25 fps.
MIN_STEP_FRACTION = 0.001


class FrameClock:
    def __init__(self, fps: int, name: str) -> None:
        self._period = 1.0 / fps
        self._min_gap = MIN_GAP_FRACTION * self._period
        self._min_step = MIN_STEP_FRACTION * self._period
        self._name = name
        self._start = trio.current_time()
        self._wall_offset = time.time() - self._start
        self._tick = 0
        self._last = -math.inf  # trio time of the last tick handed out
        self._last_rephased = -math.inf  # trio time of the last re-phased tick
        self._due_now = False  # rephase(): the pending tick is due now
        self._wake_at = math.inf  # rephase(at=...): the pending tick is due then, if not before
        self._changed = trio.Event()  # set by rephase(): a sleeping next_tick() looks again
        self.skipped = 0
        self.rephased = 0

    @property
    def due_now(self) -> bool:
        """A re-phased tick is due now (an event since the last tick): the next frame follows at once."""
        return self._due_now

    def rephase(self, at: float | None = None) -> None:
        """Make the next tick due now (or as soon as the minimum gap allows); the grid continues from it.
        With ``at`` (trio time), due then instead, unless a tick on the grid or another re-phase comes first."""
        if at is None:
            self._due_now = True
        else:
            self._wake_at = min(self._wake_at, at)
        self._changed.set()

    async def next_tick(self) -> tuple[int, float]:
        """Sleep until the next tick is due; return its index and presentation time (epoch seconds)."""
        deadline = self._start + self._tick * self._period
        while True:  # until due: on the grid, re-phased now, or re-phased for a time that has come
            self._changed = trio.Event()
            with trio.move_on_at(min(deadline, self._wake_at)):  # a time already past: just a checkpoint
                if self._due_now:
                    await trio.lowlevel.checkpoint()
                else:
                    await self._changed.wait()
            if self._due_now or trio.current_time() >= min(deadline, self._wake_at):
                break
        if self._due_now or trio.current_time() >= self._wake_at:
            self._due_now, self._wake_at = False, math.inf
            now = trio.current_time()
            earliest = max(now, self._last + self._min_step, self._last_rephased + self._min_gap)
            if earliest < deadline:
                await trio.sleep_until(earliest)
                self._start = earliest - self._tick * self._period  # the grid goes on from here
                deadline = earliest
                self._last_rephased = earliest
                self.rephased += 1
            else:
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
        self._last = deadline
        return tick, deadline + self._wall_offset
