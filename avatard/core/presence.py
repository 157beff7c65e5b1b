"""Presence: whether someone is in front of the camera, from face counts over time (no I/O, no clock of its own).

A detector misses a face now and then (a turned head, motion blur) and may see one in a texture for one picture,
so an arrival needs faces in :data:`ARRIVE_SAMPLES` pictures in a row and a departure needs no face for
:data:`LEAVE_SECONDS`. The greeting rule lives here too: greet an arrival only when the scene was empty for
``greet_after`` seconds before it (someone stepping out of view and back is not greeted twice). A scene never
seen occupied counts as long empty, so the first arrival after start-up is greeted.
"""

from __future__ import annotations

import math

import attrs

# Pictures in a row with a face before it counts as an arrival (at 2 pictures a second: 0.5 s).
ARRIVE_SAMPLES = 2
# Seconds without any face before it counts as a departure: longer than a detector's usual misses.
LEAVE_SECONDS = 3.0


@attrs.frozen
class Change:
    """What one picture changed: ``kind`` is arrived, left or faces (a new count while someone is there)."""

    kind: str
    faces: int
    greet: bool = False


class Presence:
    def __init__(self, greet_after: float) -> None:
        self.greet_after = greet_after
        self.present = False
        self.faces = 0
        self.arrivals = 0
        self.departures = 0
        self._streak = 0  # pictures in a row with a face, while nobody is present
        self._last_face = -math.inf
        self._empty_since = -math.inf  # when the last person left; never: long empty

    def update(self, faces: int, now: float) -> Change | None:
        """Feed one picture's face count, taken at ``now`` (seconds, any monotonic clock)."""
        if faces:
            self._last_face = now
        if not self.present:
            self._streak = self._streak + 1 if faces else 0
            if self._streak < ARRIVE_SAMPLES:
                return None
            self.present, self.faces, self._streak = True, faces, 0
            self.arrivals += 1
            return Change("arrived", faces, greet=now - self._empty_since >= self.greet_after)
        if not faces:
            if now - self._last_face < LEAVE_SECONDS:
                return None
            self.present, self.faces, self._empty_since = False, 0, now
            self.departures += 1
            return Change("left", 0)
        if faces != self.faces:
            self.faces = faces
            return Change("faces", faces)
        return None

    def status(self) -> dict:
        return {"present": self.present, "faces": self.faces, "arrivals": self.arrivals,
                "departures": self.departures}
