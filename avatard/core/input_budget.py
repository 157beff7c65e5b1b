"""Fair input: each source of typed turns (a browser) has its own small budget.

Two rules, checked before anything is queued; past either the source gets :class:`Busy` and nothing
is queued:

- turns waiting: at most :data:`MAX_TURNS_WAITING` of its turns not yet taken by the brain;
- characters per minute: a token bucket of :data:`CHARS_PER_MINUTE`, holding up to one turn of the
  longest kind (:data:`~avatard.constants.MAX_TEXT_CHARS`), so a single long paste passes but 40 of
  them (50 minutes of speech) do not.

The control socket's operator is not budgeted: it has its own lane (:mod:`avatard.core.input_lanes`).

Rejected: one budget for all browsers together. The first flooder would spend it and lock everyone
else out, which is the squatting this is meant to prevent.
"""

from __future__ import annotations

import trio

from ..constants import MAX_TEXT_CHARS
from ..errors import Busy

# A fast typist manages ~400 characters a minute; espeak speaks ~900. 600 a minute keeps one browser
# from holding the voice for more than about 40 s in every minute.
CHARS_PER_MINUTE = 600
CHARS_BURST = MAX_TEXT_CHARS  # a full bucket: one turn of the longest allowed kind
# A user waits for the answer before the next turn; two waiting is a user who typed ahead, more is a flood.
MAX_TURNS_WAITING = 2
# Buckets kept before the full ones (which equal fresh ones, so forgetting them loses nothing) are pruned.
PRUNE_ABOVE = 256


class InputBudget:
    def __init__(self, chars_per_minute: float = CHARS_PER_MINUTE, burst: float = CHARS_BURST, clock=None) -> None:
        self._rate = chars_per_minute / 60.0
        self._burst = burst
        self._clock = clock or trio.current_time
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (characters left, when counted)
        self.refused = 0

    def spend(self, source: str, chars: int, turns_waiting: int) -> None:
        """Take ``chars`` from ``source``'s budget, or raise Busy (and take nothing)."""
        if turns_waiting >= MAX_TURNS_WAITING:
            self.refused += 1
            raise Busy(f"{turns_waiting} of your turns are still waiting; wait for the answer")
        left = self._left(source)
        if chars > left:
            self.refused += 1
            wait = (chars - left) / self._rate
            raise Busy(f"too much text: {CHARS_PER_MINUTE} characters a minute; try again in {wait:.0f} s")
        self._buckets[source] = (left - chars, self._clock())
        if len(self._buckets) > PRUNE_ABOVE:
            self._prune()

    def _left(self, source: str) -> float:
        if source not in self._buckets:
            return self._burst
        left, when = self._buckets[source]
        return min(self._burst, left + (self._clock() - when) * self._rate)

    def _prune(self) -> None:
        for source in [s for s in self._buckets if self._left(s) >= self._burst]:
            del self._buckets[source]
