"""Turns speech audio and the passage of frames into avatar poses.

Pure and frame-driven: :meth:`Animator.next_pose` is called exactly once per video frame with the
samples that play during that frame, and "time" is the frame counter, never the wall clock. So a frame's
mouth is computed from that frame's own audio (lip sync holds by construction), a stalled event loop
slows the animation instead of making it jump, and tests can replay a session exactly.

The animator decides *when* things happen -- mouth level, blink timing, idle sway, how far a gesture has
played; :mod:`avatard.renderers.face` decides what they look like.
"""

from __future__ import annotations

import math

import numpy as np

from ..constants import GESTURES
from ..errors import UnknownGesture
from . import face
from .face import Pose

FULL_SCALE = 32768.0  # int16 full scale, the 0 dBFS reference
# Mouth level is linear in loudness (dB) between these two: below SILENCE_DBFS is room noise, breaths and
# TTS fade-outs, so the mouth stays shut; TTS speech sits around -30..-15 dBFS, so loud syllables open
# it fully and quiet ones half way, which is what makes the lips look like they follow the words.
SILENCE_DBFS = -50.0
FULL_OPEN_DBFS = -14.0
# Attack: exponential with this time constant, so one 40 ms frame covers ~86% of the way up -- a syllable's
# onset shows in the frame it starts. Release: linear, a full close takes RELEASE_S (two frames at 25 fps),
# slightly slower than the attack so the mouth does not flap shut between syllables.
ATTACK_S = 0.02
RELEASE_S = 0.08
# Blinks: humans blink every 2-6 s at rest, each ~150 ms, closing faster than opening.
BLINK_MIN_S, BLINK_MAX_S = 2.0, 6.0
BLINK_S = 0.15
BLINK_CLOSE_FRACTION = 0.4  # share of a blink spent closing
# Idle motion: slow incommensurate sines (periods in seconds, amplitudes in reference pixels / degrees)
# so the sway never visibly repeats. Breathing lifts the head slightly on each inhale.
BREATH_S = 4.2
BREATH_LIFT = 1.6
SWAY = ((2.0, 7.1, 0.0), (0.8, 2.9, 1.3))  # head_dx: (amplitude px, period s, phase rad)
TILT = ((1.2, 8.3, 0.7), (0.4, 3.7, 0.0))  # head_tilt: (amplitude deg, period s, phase rad)
# While talking the head is a little livelier and the brows lift with emphasis; this follows the mouth
# with a slow time constant so it tracks phrases, not syllables.
ENERGY_S = 0.35
TALK_BROW = 0.35
TALK_TILT = 1.5  # degrees of extra nodding-tilt at full energy
TALK_BOB = 1.5  # reference pixels of extra vertical bob at full energy



def mouth_target(audio: np.ndarray) -> float:
    """Mouth openness 0..1 that a frame's int16 samples call for, from their RMS level in dBFS."""
    if audio.size == 0:
        return 0.0
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) / FULL_SCALE
    if rms <= 0.0:
        return 0.0
    db = 20.0 * math.log10(rms)
    return min(1.0, max(0.0, (db - SILENCE_DBFS) / (FULL_OPEN_DBFS - SILENCE_DBFS)))


class Animator:
    """Produces one :class:`Pose` per frame from that frame's audio, a seeded blink schedule and gestures."""

    def __init__(self, fps: int, seed: int = 0) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps!r}")
        self.fps = fps
        self._frame_s = 1.0 / fps
        self._attack = 1.0 - math.exp(-self._frame_s / ATTACK_S)
        self._release_step = self._frame_s / RELEASE_S
        self._energy_k = 1.0 - math.exp(-self._frame_s / ENERGY_S)
        # Blinks draw from their own generator, so gestures or audio never shift the schedule.
        self._rng = np.random.default_rng(seed)
        self._blink_frames = max(2, round(BLINK_S * fps))
        self._frame = 0
        self._next_blink = self._blink_interval()
        self._blink_at = -1  # frame index within the current blink, -1 when not blinking
        self._mouth = 0.0
        self._energy = 0.0
        self._hold_shut = False
        self._gesture: str | None = None
        self._gesture_frame = 0
        self._gesture_frames = 0

    def start_gesture(self, name: str) -> None:
        """Play ``name`` from its start, replacing (or restarting) any gesture in progress."""
        if name not in GESTURES:
            raise UnknownGesture(name, GESTURES)
        self._gesture = name
        self._gesture_frame = 0
        self._gesture_frames = max(1, round(GESTURES[name] * self.fps))

    def interrupt(self) -> None:
        """Barge-in: the next pose has its mouth shut, whatever that frame's audio holds."""
        self._mouth = 0.0
        self._energy = 0.0
        self._hold_shut = True

    def next_pose(self, audio: np.ndarray) -> Pose:
        """Advance one frame; ``audio`` is the int16 16 kHz samples playing during it (may be silence)."""
        t = self._frame * self._frame_s
        mouth = self._follow_mouth(audio)
        self._energy += (mouth - self._energy) * self._energy_k

        dx = sum(a * math.sin(2.0 * math.pi * t / period + ph) for a, period, ph in SWAY)
        tilt = sum(a * math.sin(2.0 * math.pi * t / period + ph) for a, period, ph in TILT)
        tilt += TALK_TILT * self._energy * math.sin(2.0 * math.pi * t / 1.9)
        inhale = 0.5 - 0.5 * math.cos(2.0 * math.pi * t / BREATH_S)
        dy = -BREATH_LIFT * inhale - TALK_BOB * self._energy * abs(math.sin(2.0 * math.pi * t / 1.3))

        gesture, phase = self._gesture, 0.0
        if gesture is not None:
            phase = self._gesture_frame / self._gesture_frames
            self._gesture_frame += 1
            if self._gesture_frame >= self._gesture_frames:
                self._gesture = None

        pose = Pose(mouth=mouth, blink=self._next_blink_closure(), head_dx=dx, head_dy=dy, head_tilt=tilt,
                    brow=TALK_BROW * self._energy, smile=face.RESTING_SMILE, gesture=gesture, gesture_phase=phase)
        self._frame += 1
        return pose

    # -- internals ------------------------------------------------------------------------------------

    def _follow_mouth(self, audio: np.ndarray) -> float:
        if self._hold_shut:
            self._hold_shut = False
            return 0.0
        target = mouth_target(audio)
        if target >= self._mouth:
            self._mouth += (target - self._mouth) * self._attack
        else:
            self._mouth = max(target, self._mouth - self._release_step)
        if self._mouth < 0.02:  # a sliver of open mouth reads as a drawing glitch, not speech
            self._mouth = 0.0
        return self._mouth

    def _blink_interval(self) -> int:
        return max(1, round(self._rng.uniform(BLINK_MIN_S, BLINK_MAX_S) * self.fps))

    def _next_blink_closure(self) -> float:
        if self._blink_at < 0:
            self._next_blink -= 1
            if self._next_blink > 0:
                return 0.0
            self._blink_at = 0
        # A triangle that closes over the first BLINK_CLOSE_FRACTION and reopens over the rest, scaled so
        # the middle frame is fully shut even when a blink spans only a few frames.
        x = (self._blink_at + 0.5) / self._blink_frames
        tri = x / BLINK_CLOSE_FRACTION if x < BLINK_CLOSE_FRACTION else (1.0 - x) / (1.0 - BLINK_CLOSE_FRACTION)
        self._blink_at += 1
        if self._blink_at >= self._blink_frames:
            self._blink_at = -1
            self._next_blink = self._blink_interval()
        return min(1.0, 1.25 * tri)
