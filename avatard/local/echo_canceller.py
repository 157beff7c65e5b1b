"""Acoustic echo cancellation for local mode: the avatar's voice removed from the microphone (``--aec``).

On open speakers the microphone hears the avatar. WebRTC's AEC3 (through ``aec-audio-processing``, a
binding of webrtc-audio-processing 2.x) subtracts it, given the exact signal the speaker played as its
reference. Two threads meet here, one object each:

- :class:`ReferenceTap`, on the **speaker's** PortAudio thread: each block the callback hands the card
  is copied into a bounded deque. Taken there, and not from the renderer's frames, so that the speaker
  ring's trimming and skipping, the resampling to the card's rate and the device latency all lie between
  reference and echo, inside what the canceller measures and learns;
- :class:`EchoCanceller`, on the **microphone's** PortAudio thread: the microphone's 16 kHz mono audio is
  cut into 10 ms frames; before each, all the reference that arrived since is resampled to 16 kHz and
  given to ``process_reverse_stream``; then ``process_stream`` cancels the frame. Nothing downstream
  (barge-in, the brain) sees the microphone before this.

Every APM call is made on the microphone's thread. WebRTC allows render and capture on two threads
(its locks), but the binding holds the GIL through each call anyway (~70 us a frame), so a second
thread would buy nothing and would have to share the resampler's and the frame buffers' state.

AEC3's residual-echo suppressor is tuned for a visitor who talks over the avatar (:data:`TUNINGS`), through
WebRTC's field trials: the one door the binding leaves open to AEC3's configuration.

Rejected: the APM's own delay hint (``set_stream_delay``): AEC3 estimates the delay itself and ignores
it; AEC on the renderer's 16 kHz frames: the speaker's ring can trim or skip samples, so that reference
would not be what the room heard.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import threading

import numpy as np

from ..config import DEFAULT_AEC_TUNING
from ..constants import RATE
from ..core.audio import StreamResampler
from ..errors import ConfigError
from .echo_meter import FRAME, EchoMeter

logger = logging.getLogger("avatard.aec")

# One second of speaker blocks waiting for the microphone's thread, which drains them every 20 ms.
# Fuller means the microphone stopped (or has not started): the oldest reference goes (counted); it
# would only describe echo that is long gone.
REFERENCE_HANDOFF_BLOCKS = 100
# AEC3 leaks echo until it has adapted on some of the avatar's voice: the feasibility check measured
# convergence within 0.5 s of far-end speech; twice that before the microphone is trusted over it.
CONVERGENCE_FRAMES = 100
INSTALL_HINT = "pip install 'avatard[aec]' (aec-audio-processing, Python >= 3.11), or run with --aec off"

# AEC3's suppressor (``--aec-tuning``). The binding builds AEC3 from WebRTC's default EchoCanceller3Config and
# takes no config, but the library in its wheel reads WebRTC's field trials -- one process-wide string,
# ``webrtc::field_trial::InitFieldTrialsFromString`` -- every time it builds an AEC3, and adjusts the config by
# them (``AdjustConfig`` in modules/audio_processing/aec3/echo_canceller3.cc). "double-talk" is three of WebRTC's
# own named tunings of the suppressor's near-end state, the state AEC3 enters when the microphone holds much
# more than the echo it predicts (someone else is talking):
#   - EnforceMoreTransparentNearendSuppressorTuning: low bands pass up to an echo-to-near-end ratio of 1.29
#     and are suppressed from 1.3 (default 1.09 / 1.1);
#   - EnforceMoreTransparentNearendSuppressorHfTuning: the high bands likewise, 1.09 / 1.1 (default 0.1 / 0.3);
#   - EnforceRapidlyAdjustingNearendSuppressorTunings: the gain may rise 2.5x per 4 ms block (default 2x).
# Measured on bench/aec.py's room recordings (6, medians): double talk 0.84 -> 0.89 (the visitor's first 0.5 s
# 0.76 -> 0.80), ERLE over echo alone 36.2 dB both ways (echo alone never enters the near-end state). The cost:
# while someone talks over the avatar, more of the avatar's residual echo passes along with their voice.
# "webrtc" is AEC3's stock tuning, which mutes more of that visitor.
TUNINGS = {
    "double-talk": ("WebRTC-Aec3EnforceMoreTransparentNearendSuppressorTuning/Enabled/"
                    "WebRTC-Aec3EnforceMoreTransparentNearendSuppressorHfTuning/Enabled/"
                    "WebRTC-Aec3EnforceRapidlyAdjustingNearendSuppressorTunings/Enabled/"),
    "webrtc": "",
}
INIT_FIELD_TRIALS = "_ZN6webrtc11field_trial25InitFieldTrialsFromStringEPKc"  # (const char*), Itanium C++ ABI
# The library keeps the pointer it is given, not a copy: every string handed to it lives as long as the process.
_field_trials: dict[str, ctypes.Array] = {}


def load_processor_class():
    """The binding's ``AudioProcessor``; ConfigError (one line, naming the fix) if it is not installed."""
    try:
        from aec_audio_processing import AudioProcessor
    except ImportError as exc:
        raise ConfigError(f"--aec: the echo canceller is not available ({exc}); {INSTALL_HINT}") from None
    return AudioProcessor


def install_tuning(name: str) -> str:
    """Make every AEC3 built from now on (in this process) use the tuning ``name``; returns the tuning in
    effect: "webrtc" when the library cannot take field trials (a build without the library handle or the
    symbol), with a warning."""
    try:
        from aec_audio_processing import lib
        init = lib[INIT_FIELD_TRIALS]
    except (ImportError, AttributeError):
        if TUNINGS[name]:
            logger.warning("--aec-tuning %s: this aec-audio-processing build takes no field trials; AEC3 runs with "
                           "WebRTC's stock tuning", name)
        return "webrtc"
    init.argtypes, init.restype = [ctypes.c_char_p], None
    trials = _field_trials.setdefault(name, ctypes.create_string_buffer(TUNINGS[name].encode()))
    init(trials)
    return name


class ReferenceTap:
    """What the speaker played, handed from its PortAudio thread to the microphone's (bounded, drop-oldest)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate  # the speaker's rate
        self._blocks: collections.deque[np.ndarray] = collections.deque()
        self._lock = threading.Lock()
        self.dropped = 0

    def push(self, block: np.ndarray) -> None:
        """Speaker thread: one block as handed to the card (first channel)."""
        block = block.copy()
        with self._lock:
            if len(self._blocks) >= REFERENCE_HANDOFF_BLOCKS:
                self._blocks.popleft()
                self.dropped += 1
            self._blocks.append(block)

    def take(self) -> np.ndarray | None:
        """Microphone thread: everything pushed since the last take, oldest first (None: nothing)."""
        with self._lock:
            if not self._blocks:
                return None
            blocks = list(self._blocks)
            self._blocks.clear()
        return np.concatenate(blocks)

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()


class EchoCanceller:
    """The microphone thread's side: 16 kHz mono in, the same with the echo removed, plus near-end flags.

    With ``processor=None`` (``--aec off``) the audio passes unchanged, but the reference is still
    measured against it, so status shows the echo the room leaks and self-interrupts are still judged.
    """

    name = "echo_canceller"

    def __init__(self, tap: ReferenceTap, processor, *, noise_suppression: bool, tuning: str | None = None) -> None:
        self._tap = tap
        self._processor = processor
        self.noise_suppression = noise_suppression
        self.tuning = tuning  # the suppressor's tuning in effect (None: no canceller)
        self._resampler = StreamResampler(tap.rate, RATE)
        self._reference = np.zeros(0, np.int16)  # 16 kHz reference short of a whole frame
        self._pending = np.zeros(0, np.int16)  # microphone samples short of a whole frame
        self.meter = EchoMeter()
        self.frames_processed = 0
        self._adapting_since = 0  # the meter's speech_frames when the canceller last started to adapt

    @classmethod
    def open(cls, tap: ReferenceTap, *, enabled: bool, noise_suppression: bool,
             tuning: str = DEFAULT_AEC_TUNING) -> EchoCanceller:
        """AEC3 with its suppressor tuned as ``tuning`` (:data:`TUNINGS`), noise suppression only if asked; no gain
        control (the brain and the detectors want the level as the room gives it). All features off would make
        the APM output silence."""
        processor = in_effect = None
        if enabled:
            processor_class = load_processor_class()
            in_effect = install_tuning(tuning)  # before the APM exists: AEC3 reads the trials when it is built
            processor = processor_class(enable_aec=True, enable_ns=noise_suppression, enable_agc=False, enable_vad=False)
            processor.set_stream_format(RATE, 1)
            processor.set_reverse_stream_format(RATE, 1)  # the same rate for both streams: AEC3 needs it
        return cls(tap, processor, noise_suppression=noise_suppression, tuning=in_effect)

    def start(self) -> None:
        """The microphone starts now: reference pushed before it describes no echo we will hear."""
        self._tap.clear()

    def process(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cancel the echo in whole 10 ms frames; returns (samples, near-end flag per frame)."""
        data = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        whole = len(data) // FRAME * FRAME
        self._pending = data[whole:].copy()
        out = np.empty(whole, np.int16)
        near_end = np.zeros(whole // FRAME, dtype=bool)
        self._feed_reference()
        for index, start in enumerate(range(0, whole, FRAME)):
            frame = data[start:start + FRAME]
            if self._processor is not None:
                cleaned = np.frombuffer(self._processor.process_stream(frame.tobytes()), np.int16)
                self.frames_processed += 1
            else:
                cleaned = frame
            out[start:start + FRAME] = cleaned
            near_end[index] = self.meter.frame(frame, cleaned)
        return out, near_end

    def _feed_reference(self) -> None:
        taken = self._tap.take()
        if taken is None:
            return
        reference = self._resampler.process(taken)
        if len(self._reference):
            reference = np.concatenate([self._reference, reference])
        whole = len(reference) // FRAME * FRAME
        for start in range(0, whole, FRAME):
            frame = reference[start:start + FRAME]
            if self._processor is not None:
                self._processor.process_reverse_stream(frame.tobytes())
            self.meter.reference(frame)
        self._reference = reference[whole:].copy()

    @property
    def cancelling(self) -> bool:
        return self._processor is not None

    def readapt(self) -> None:
        """After a barge-in: AEC3 adapted its filter during the double talk and leaks the start of the
        avatar's next answer (in the room tests and bench/aec.py that answer's own echo interrupted it, a
        self-interrupt); converge again on that answer, as at start-up. Trio's thread marks; only the
        microphone's thread counts speech frames."""
        self._adapting_since = self.meter.speech_frames

    @property
    def converging(self) -> bool:
        """AEC on, but not yet adapted (since start-up or the last barge-in): the microphone still carries
        echo (any thread may ask)."""
        return self._processor is not None and self.meter.speech_frames - self._adapting_since < CONVERGENCE_FRAMES

    def status(self) -> dict:
        return {"aec": self._processor is not None, "converging": self.converging, "tuning": self.tuning,
                "noise_suppression": self.noise_suppression,
                "delay_ms": self.meter.delay_ms, "erle_db": self.meter.erle_db,
                "frames_processed": self.frames_processed, "reference_dropped": self._tap.dropped}
