"""The local parts of the daemon, started in the root nursery: recorder, speaker, microphone, window feed, audio file.

Which run depends on the mode (see ``Config.wants_*``):

    local mode (default)      window + speaker + microphone (the audio file replaces the microphone)
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

import attrs
import numpy as np
import trio

from ..config import Config


@attrs.frozen
class LocalSetup:
    """What the local parts need, prepared before start-up (None: not wanted)."""

    output: object | None = None  # devices.Choice for the speaker
    input: object | None = None  # devices.Choice for the microphone
    audio: np.ndarray | None = attrs.field(default=None, eq=False)  # the decoded --audio-file
    capture: object | None = attrs.field(default=None, eq=False)  # the opened --camera (cv2.VideoCapture)


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
                      audio=audio, capture=capture)


@attrs.frozen
class LocalParts:
    """The local parts this run uses (None: not wanted), built before the hub so it can be given them."""

    recorder: object | None = None
    speaker: object | None = None
    microphone: object | None = None
    window: object | None = None
    audio_file: object | None = None
    camera: object | None = None

    @property
    def sinks(self) -> tuple:
        """The parts that take frames: the hub flushes them on every interrupt."""
        return tuple(part for part in (self.recorder, self.speaker, self.window) if part is not None)

    @property
    def all(self) -> tuple:
        return tuple(part for part in (self.recorder, self.speaker, self.microphone, self.window, self.audio_file,
                                       self.camera) if part is not None)


def make_local_parts(config: Config, setup: LocalSetup, renderer, window) -> LocalParts:
    """Build (not start) the wanted parts; device modules are imported only when a device is wanted."""
    recorder = speaker = microphone = audio_file = camera = None
    if config.record is not None:
        from .recorder import Recorder
        recorder = Recorder(config.record, renderer)
    if setup.output is not None:
        from .speaker import Speaker
        speaker = Speaker(setup.output)
    if setup.input is not None:
        from .microphone import Microphone
        microphone = Microphone(setup.input, barge_in=config.barge_in_enabled)
    if setup.audio is not None:
        from .audio_file import AudioFileSource
        audio_file = AudioFileSource(setup.audio, config.audio_file)
    if setup.capture is not None:
        from .camera import Camera
        camera = Camera(config.camera, setup.capture)
    return LocalParts(recorder=recorder, speaker=speaker, microphone=microphone, window=window, audio_file=audio_file,
                      camera=camera)


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
