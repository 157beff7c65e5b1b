"""The local parts of the daemon, started in the root nursery: recorder, speaker, microphone, window feed, audio file.

Which run depends on the mode (see ``Config.wants_*``):

    local mode (default)      window + speaker + microphone (the audio file replaces the microphone);
                              with both devices, the echo canceller between them (``--aec``)
    --server                  none of the devices; --local-display adds the window
    either                    --audio-file streams the file as the user's voice; --record writes an .mp4;
                              --camera gives the avatar eyes

:func:`prepare` does the fallible work first, on the main thread and before anything runs: decode the
audio file, load PortAudio, choose the devices. A failure there is one line and exit code 2, with no
socket bound and no window opened. Device modules (sounddevice, PortAudio) are imported only when a
device is wanted, so a server needs neither. :func:`make_local_parts` builds the parts before the hub
(which shows their counters in ``avatarctl status`` and flushes the sinks on interrupts);
:func:`start_local_parts` starts them once the renderer runs.
"""

from __future__ import annotations

import logging

import attrs
import numpy as np
import trio

from ..config import Config
from ..errors import ConfigError

logger = logging.getLogger("avatard.local")


@attrs.frozen
class LocalSetup:
    """What the local parts need, prepared before start-up (None: not wanted)."""

    output: object | None = None  # devices.Choice for the speaker
    input: object | None = None  # devices.Choice for the microphone
    audio: np.ndarray | None = attrs.field(default=None, eq=False)  # the decoded --audio-file
    capture: object | None = attrs.field(default=None, eq=False)  # the opened --camera (cv2.VideoCapture)
    aec: bool = False  # the echo canceller runs (its package loads)


def prepare(config: Config) -> LocalSetup:
    """Decode the audio file and choose the sound devices; raises ConfigError (one line) on failure.

    Runs on the main thread before trio starts: sounddevice mutes stderr (process-wide) while PortAudio
    initialises, which would swallow other threads' log lines.
    """
    audio = capture = None
    if config.audio_file is not None:
        from .audio_file import load
        audio = load(config.audio_file)
    if config.camera is not None:
        from .camera import check_camera
        capture = check_camera(config.camera)
    if not (config.wants_speaker or config.wants_microphone):
        return LocalSetup(audio=audio, capture=capture)
    from . import devices
    return LocalSetup(output=devices.choose(config.output_device, "output") if config.wants_speaker else None,
                      input=devices.choose(config.input_device, "input") if config.wants_microphone else None,
                      audio=audio, capture=capture, aec=_aec_loads(config))


def _aec_loads(config: Config) -> bool:
    """Whether the echo canceller will run: wanted, and its package imports.

    ``--aec on`` without the package is a ConfigError; ``auto`` falls back to off with a warning (the
    package needs Python 3.11, avatard runs on 3.10), and barge-in ``auto`` then stays off as before.
    """
    if not config.aec_wanted:
        return False
    from .echo_canceller import load_processor_class
    try:
        load_processor_class()
    except ConfigError as exc:
        if config.aec == "on":
            raise
        logger.warning("%s; barge-in needs --barge-in on (with headphones) or a key", exc)
        return False
    return True


@attrs.frozen
class LocalParts:
    """The local parts this run uses (None: not wanted), built before the hub so it can be given them."""

    recorder: object | None = None
    speaker: object | None = None
    microphone: object | None = None
    window: object | None = None
    audio_file: object | None = None
    echo_canceller: object | None = None  # not a task: runs inside the microphone's callback; here for status()
    camera: object | None = None

    @property
    def sinks(self) -> tuple:
        """The parts that take frames: the hub flushes them on every interrupt."""
        return tuple(part for part in (self.recorder, self.speaker, self.window) if part is not None)

    @property
    def all(self) -> tuple:
        return tuple(part for part in (self.recorder, self.speaker, self.microphone, self.echo_canceller, self.window,
                                       self.audio_file, self.camera) if part is not None)


def make_local_parts(config: Config, setup: LocalSetup, renderer, window) -> LocalParts:
    """Build (not start) the wanted parts; device modules are imported only when a device is wanted."""
    recorder = speaker = microphone = audio_file = camera = canceller = tap = None
    if config.record is not None:
        from .recorder import Recorder
        recorder = Recorder(config.record, renderer)
    if setup.input is not None and setup.output is not None:
        from .echo_canceller import EchoCanceller, ReferenceTap
        tap = ReferenceTap(setup.output.rate)
        canceller = EchoCanceller.open(tap, enabled=setup.aec, noise_suppression=config.aec_ns,
                                       tuning=config.aec_tuning)
    if setup.output is not None:
        from .speaker import Speaker
        speaker = Speaker(setup.output, reference=tap)
    if setup.input is not None:
        from .microphone import Microphone
        barge_in = config.barge_in_enabled(setup.aec)
        # Gemini hears barge-in itself (server-side activity detection) and interrupts through the hub; the
        # offline brain only waits for utterances to end, so for it the microphone interrupts.
        microphone = Microphone(setup.input, canceller, barge_in=barge_in,
                                interrupts=barge_in and config.brain_kind == "local")
    if setup.audio is not None:
        from .audio_file import AudioFileSource
        audio_file = AudioFileSource(setup.audio, config.audio_file)
    if setup.capture is not None:
        from .camera import Camera
        camera = Camera(config.camera, setup.capture)
    return LocalParts(recorder=recorder, speaker=speaker, microphone=microphone, window=window, audio_file=audio_file,
                      echo_canceller=canceller, camera=camera)


async def start_local_parts(nursery: trio.Nursery, parts: LocalParts, hub, fanout) -> None:
    """Start the parts in ``nursery`` (borrowed: they live as long as the daemon); returns once all run."""
    if parts.recorder is not None:
        await nursery.start(parts.recorder.run, fanout)
    if parts.speaker is not None:
        await nursery.start(parts.speaker.run, fanout)
    if parts.microphone is not None:
        await nursery.start(parts.microphone.run, hub)
    if parts.window is not None:  # after the devices: the window opens only once they all work
        await nursery.start(parts.window.feed, fanout, parts.speaker.delay if parts.speaker is not None else None)
    if parts.audio_file is not None:
        await nursery.start(parts.audio_file.run, hub)
    if parts.camera is not None:
        await nursery.start(parts.camera.run, hub)
