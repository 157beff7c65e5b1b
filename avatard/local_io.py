"""The local parts of the daemon, started in the root nursery: recorder, speaker, microphone, window feed, audio file.

Which run depends on the mode (see ``Config.wants_*``):

    local mode (default)      window + speaker + microphone (the audio file replaces the microphone)
    --server                  none of the devices; --local-display adds the window
    either                    --audio-file streams the file as the user's voice; --record writes an .mp4

:func:`prepare` does the fallible work first, on the main thread and before anything runs: decode the
audio file, load PortAudio, choose the devices. A failure there is one line and exit code 2, with no
socket bound and no window opened. Device modules (sounddevice, PortAudio) are imported only when a
device is wanted, so a server needs neither. Every part registers in ``hub.local_io`` so ``avatarctl
status`` shows its counters.
"""

from __future__ import annotations

import attrs
import numpy as np
import trio

from .config import Config


@attrs.frozen
class LocalSetup:
    """What the local parts need, prepared before start-up (None: not wanted)."""

    output: object | None = None  # devices.Choice for the speaker
    input: object | None = None  # devices.Choice for the microphone
    audio: np.ndarray | None = attrs.field(default=None, eq=False)  # the decoded --audio-file


def prepare(config: Config) -> LocalSetup:
    """Decode the audio file and choose the sound devices; raises ConfigError (one line) on failure.

    Runs on the main thread before trio starts: sounddevice mutes stderr (process-wide) while PortAudio
    initialises, which would swallow other threads' log lines.
    """
    audio = None
    if config.audio_file is not None:
        from .audio_file import load
        audio = load(config.audio_file)
    if not (config.wants_speaker or config.wants_microphone):
        return LocalSetup(audio=audio)
    from . import devices
    return LocalSetup(output=devices.choose(config.output_device, "output") if config.wants_speaker else None,
                      input=devices.choose(config.input_device, "input") if config.wants_microphone else None,
                      audio=audio)


async def start_local_io(nursery: trio.Nursery, config: Config, hub, fanout, window, setup: LocalSetup) -> None:
    """Start the wanted parts in ``nursery`` (borrowed: they live as long as the daemon); returns once all run."""
    if config.record is not None:
        from .recorder import Recorder
        recorder = Recorder(config.record, width=hub.renderer.width, height=hub.renderer.height, fps=hub.renderer.fps,
                            current_generation=lambda: hub.renderer.generation)
        await nursery.start(recorder.run, fanout)
        hub.local_io["recorder"] = recorder
    speaker = None
    if setup.output is not None:
        from .speaker import Speaker
        speaker = Speaker(setup.output, lambda: hub.renderer.generation)
        hub.on_interrupt(speaker.flush)
        await nursery.start(speaker.run, fanout)
        hub.local_io["speaker"] = speaker
    if setup.input is not None:
        from .microphone import Microphone
        microphone = Microphone(setup.input, hub, barge_in=config.barge_in_enabled)
        await nursery.start(microphone.run)
        hub.local_io["microphone"] = microphone
    if window is not None:  # after the devices: the window opens only once they all work
        await nursery.start(window.feed, fanout, speaker.delay if speaker is not None else None)
        hub.local_io["window"] = window
    if setup.audio is not None:
        from .audio_file import AudioFileSource
        source = AudioFileSource(hub, setup.audio, config.audio_file)
        hub.audio_file = source
        await nursery.start(source.run)
        hub.local_io["audio_file"] = source
