"""The local parts of the daemon, started in the root nursery: window feed, recorder, speaker, microphone, audio file.

Which run depends on the mode (see ``Config.wants_*``):

    local mode (default)      window + speaker + microphone (the audio file replaces the microphone)
    --server                  none of the devices; --local-display adds the window
    either                    --audio-file streams the file as the user's voice; --record writes an .mp4

Device modules (sounddevice, PortAudio) are imported only when a device is wanted, so a server needs
neither. Every part registers in ``hub.local_io`` so ``avatarctl status`` shows its counters.
"""

from __future__ import annotations

import numpy as np
import trio

from .config import Config


async def load_audio_file(config: Config) -> np.ndarray | None:
    """Decode ``--audio-file`` before anything starts, so a bad file stops start-up with one line."""
    if config.audio_file is None:
        return None
    from .audio_file import load
    return await trio.to_thread.run_sync(load, config.audio_file)


async def start_local_io(nursery: trio.Nursery, config: Config, hub, fanout, window, audio: np.ndarray | None) -> None:
    """Start the wanted parts in ``nursery`` (borrowed: they live as long as the daemon); returns once all run."""
    if config.record is not None:
        from .recorder import Recorder
        recorder = Recorder(config.record, width=hub.renderer.width, height=hub.renderer.height, fps=hub.renderer.fps,
                            current_generation=lambda: hub.renderer.generation)
        await nursery.start(recorder.run, fanout)
        hub.local_io["recorder"] = recorder
    if config.wants_speaker:
        from . import devices
        from .speaker import Speaker
        choice = await trio.to_thread.run_sync(devices.choose, config.output_device, "output")
        speaker = Speaker(choice, lambda: hub.renderer.generation)
        hub.on_interrupt(speaker.flush)
        await nursery.start(speaker.run, fanout)
        hub.local_io["speaker"] = speaker
    if config.wants_microphone:
        from . import devices
        from .microphone import Microphone
        choice = await trio.to_thread.run_sync(devices.choose, config.input_device, "input")
        microphone = Microphone(choice, hub, barge_in=config.barge_in_enabled)
        await nursery.start(microphone.run)
        hub.local_io["microphone"] = microphone
    if window is not None:  # after the devices: the window opens only once they all work
        await nursery.start(window.feed, fanout)
        hub.local_io["window"] = window
    if audio is not None:
        from .audio_file import AudioFileSource
        source = AudioFileSource(hub, audio, config.audio_file)
        hub.audio_file = source
        await nursery.start(source.run)
        hub.local_io["audio_file"] = source
