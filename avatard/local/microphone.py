"""Local mode's microphone: a PortAudio input stream feeding ``hub.user_audio(..., "microphone")``.

PortAudio calls us on its own thread every 20 ms. That thread must never wait on trio. It converts the
block to 16 kHz mono (if the device could not do that itself) and runs it through the echo canceller
(:mod:`avatard.local.echo_canceller`: the avatar's voice removed, near-end speech flagged), so nothing
else ever sees the raw microphone. It then appends the result to a bounded deque and, if no wake-up is
pending yet, asks trio (``run_sync_soon``) to wake the forwarding task. When trio falls
:data:`HANDOFF_BLOCKS` behind, the oldest block is dropped (and counted): for live speech the newest
audio is the one worth keeping. The forwarding task hands the audio to the brain, waiting when the
brain's queue is full (that wait is what lets the deque fill up).

Barge-in (``--barge-in``): with ``on`` the user can talk over the avatar, and the brain hears it. Gemini
then interrupts itself; for the offline brain, which cannot, the microphone does (``interrupts``): a
speech onset while the avatar speaks (:mod:`avatard.local.barge_in`) calls ``hub.interrupt`` -- unless
the echo canceller runs and the onset is judged the avatar's own echo (counted as a self-interrupt
prevented; its audio is kept from the brain, which holds it back by one onset window while the avatar
speaks, and the microphone waits for the canceller to re-adapt). Without the canceller (headphones)
every onset interrupts. With
``off`` the microphone is gated while the avatar speaks and for :data:`ECHO_TAIL_SECONDS` after: blocks
are discarded (counted), so the avatar's own voice coming out of open speakers is not taken for the
user. ``auto`` is ``on`` unless this daemon drives a speaker without echo cancellation (``--aec off``).
Until the echo canceller has adapted (its first second of the avatar's voice after start-up, and again
after each barge-in) the microphone is gated as with ``off``: before that it would pass the echo on.
"""

from __future__ import annotations

import collections
import logging
import threading

import numpy as np
import trio

from ..constants import RATE
from ..core.audio import StreamResampler, downmix
from ..errors import ConfigError
from . import devices
from .barge_in import ONSET_WINDOW_FRAMES, SpeechOnset
from .echo_canceller import EchoCanceller
from .echo_meter import FRAME

logger = logging.getLogger("avatard.microphone")

BLOCK_SECONDS = 0.02  # PortAudio block: the local brain's detector and Gemini both work in 20 ms steps
# 1 s of blocks waiting for trio. A longer stall means the audio is stale anyway; drop the oldest.
HANDOFF_BLOCKS = 50
# PortAudio's suggested input latency: two blocks. sounddevice's default is the device's "high" latency
# (through ALSA's pulse plugin, hundreds of ms), which would come on top of every barge-in.
DEVICE_LATENCY = 0.04
# The speaker plays the last frames a little after the renderer stops speaking (ring + device buffer),
# and a room reverberates; keep the gate shut this long after so that tail is not heard as the user.
ECHO_TAIL_SECONDS = 0.3
# Barge-in for the offline brain holds back this much audio while the avatar speaks: the onset window, until
# the onset judge has cleared it (120 ms later for the brain, which only waits for utterances to end).
HOLD_SAMPLES = ONSET_WINDOW_FRAMES * FRAME
_NO_AUDIO = np.zeros(0, np.int16)


class Microphone:
    name = "microphone"

    def __init__(self, choice: devices.Choice, canceller: EchoCanceller, *, barge_in: bool, interrupts: bool) -> None:
        self.choice = choice
        self._canceller = canceller  # used on PortAudio's thread only
        self._hub = None  # the hub, given to run()
        self.barge_in = barge_in
        self.interrupts = interrupts  # barge-in interrupts the avatar here (the brain has no barge-in of its own)
        self._onset = SpeechOnset()
        # (16 kHz samples with the echo removed, near-end flag per 10 ms frame) waiting for trio
        self._blocks: collections.deque[tuple[np.ndarray, np.ndarray]] = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._ready = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._resampler = StreamResampler(choice.rate, RATE)
        self._quiet_until = 0.0
        self.blocks_captured = 0
        self.blocks_dropped = 0  # trio fell HANDOFF_BLOCKS behind: the oldest went
        self.blocks_gated = 0  # discarded while the avatar spoke (barge-in off, or the canceller still adapting)
        self.barge_ins = 0  # interrupts this microphone made
        self.self_interrupts = 0  # ... of which nobody but the avatar was talking (judged before cancellation)
        self.self_interrupts_prevented = 0  # onsets so judged that did not interrupt (the canceller runs)
        self.samples_dropped_as_echo = 0  # ... their audio, kept from the brain
        self._held = _NO_AUDIO  # the last onset window while the avatar speaks, not yet cleared for the brain
        self.device_overflows = 0  # PortAudio's own report: we were late reading the card

    async def run(self, hub, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Capture and forward to ``hub.user_audio`` until cancelled; ``started()`` once the stream runs."""
        self._hub = hub
        self._token = trio.lowlevel.current_trio_token()
        self._canceller.start()
        stream = await trio.to_thread.run_sync(self._open)
        try:
            logger.info("microphone: %s (%d Hz, %d ch), barge-in %s, echo cancellation %s", self.choice.name,
                        self.choice.rate, self.choice.channels, "on" if self.barge_in else "off",
                        "on" if self._canceller.status()["aec"] else "off")
            task_status.started()
            await self._forward()
        finally:
            stream.abort(ignore_errors=True)
            stream.close(ignore_errors=True)
            logger.info("microphone closed: %s", self.status())

    def _open(self):
        sd = devices.sounddevice()
        try:
            stream = sd.InputStream(device=self.choice.index, samplerate=self.choice.rate, channels=self.choice.channels,
                                    dtype="int16", blocksize=int(BLOCK_SECONDS * self.choice.rate),
                                    latency=DEVICE_LATENCY, callback=self._callback)
            stream.start()
        except sd.PortAudioError as exc:
            raise ConfigError(f"--input-device: cannot open {self.choice.name!r}: {exc}; {devices.LIST_HINT}") from None
        return stream

    def _callback(self, indata: np.ndarray, frames: int, time_info, status) -> None:
        # PortAudio's thread: convert, cancel the echo, append, maybe schedule one wake-up; never wait on trio.
        if status.input_overflow:
            self.device_overflows += 1
        block = self._canceller.process(self._resampler.process(downmix(indata)))
        with self._lock:
            self.blocks_captured += 1
            if len(self._blocks) >= HANDOFF_BLOCKS:
                self._blocks.popleft()
                self.blocks_dropped += 1
            self._blocks.append(block)
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            pass  # shutting down; the stream is about to be closed

    def _wake(self) -> None:
        # Runs in the trio thread. Clearing the flag before waking means a block appended after this
        # point schedules a new wake-up, and one appended before it is seen by the task's next drain.
        with self._lock:
            self._wake_pending = False
        self._ready.set()

    async def _forward(self) -> None:
        while True:
            await self._ready.wait()
            self._ready = trio.Event()
            with self._lock:
                blocks = list(self._blocks)
                self._blocks.clear()
            if not blocks:
                continue
            if self._gated():
                self.blocks_gated += len(blocks)
                continue
            samples = np.concatenate([samples for samples, _ in blocks])
            if self.interrupts:
                samples = self._watch_for_barge_in(samples, np.concatenate([near_end for _, near_end in blocks]))
            if len(samples):
                await self._hub.user_audio(samples, "microphone")

    def _watch_for_barge_in(self, samples: np.ndarray, near_end: np.ndarray) -> np.ndarray:
        """Returns the audio cleared for the brain: while the avatar speaks, the last onset window is held
        back until it is known not to be the avatar's own echo (then it is dropped, with what follows)."""
        held = np.concatenate([self._held, samples]) if len(self._held) else samples
        if not self._hub.speaking:
            self._onset.reset()
            self._held = _NO_AUDIO
            return held
        onset = self._onset.feed(samples, near_end)
        if onset is None:
            self._held = held[-HOLD_SAMPLES:]
            return held[:-HOLD_SAMPLES] if len(held) > HOLD_SAMPLES else _NO_AUDIO
        self._held = _NO_AUDIO
        if onset.self_interrupt and self._canceller.cancelling:
            # The canceller let some of the avatar's voice through (it re-adapts after the room's echo path
            # moved: in the room tests, a sound server starved by a loaded box) and the judge, which looks at
            # the microphone before cancellation, heard nobody else: not a reason to stop talking, nor words
            # for the brain (it would answer its own echo). The microphone waits for the canceller again.
            self.self_interrupts_prevented += 1
            self.samples_dropped_as_echo += len(held)
            self._canceller.readapt()
            logger.info("speech onset judged the avatar's own echo (%.0f %% near-end): not interrupting; "
                        "echo cancellation: %s", onset.near_end_share * 100, self._canceller.status())
            return _NO_AUDIO
        self.barge_ins += 1
        if onset.self_interrupt:
            self.self_interrupts += 1
            logger.warning("barge-in with nobody but the avatar talking (%.0f %% near-end): a self-interrupt; "
                           "echo cancellation: %s", onset.near_end_share * 100, self._canceller.status())
        self._canceller.readapt()
        self._hub.interrupt(self.name)
        return held

    def _gated(self) -> bool:
        if self.barge_in and not self._canceller.converging:
            return False
        now = trio.current_time()
        if self._hub.speaking:
            self._quiet_until = now + ECHO_TAIL_SECONDS
            return True
        return now < self._quiet_until

    def status(self) -> dict:
        return {"device": self.choice.name, "rate": self.choice.rate, "barge_in": self.barge_in,
                "blocks_captured": self.blocks_captured, "blocks_dropped": self.blocks_dropped,
                "blocks_gated": self.blocks_gated, "device_overflows": self.device_overflows,
                "barge_ins": self.barge_ins, "self_interrupts": self.self_interrupts,
                "self_interrupts_prevented": self.self_interrupts_prevented,
                "samples_dropped_as_echo": self.samples_dropped_as_echo}
