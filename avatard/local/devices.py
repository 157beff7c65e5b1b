"""Sound devices for local mode: loading PortAudio, listing devices, choosing one and a format it takes.

Only local mode imports this module (and with it sounddevice and PortAudio), so a server with no sound
hardware, or no PortAudio at all, never needs them. Every failure here is a :class:`ConfigError` with
one line that names the flag and says what to do.
"""

from __future__ import annotations

import attrs

from ..constants import RATE
from ..errors import ConfigError

INSTALL_PORTAUDIO = "sudo apt-get install libportaudio2"
LIST_HINT = "see `avatard --list-devices`"


def sounddevice():
    """Import sounddevice, which loads the PortAudio shared library (it raises OSError without it)."""
    try:
        import sounddevice
    except OSError as exc:
        raise ConfigError(f"local audio needs the PortAudio library ({exc}): {INSTALL_PORTAUDIO}, "
                          f"or run with --server") from None
    return sounddevice


def describe() -> str:
    """What ``avatard --list-devices`` prints: every device, with the defaults marked."""
    sd = sounddevice()
    devices = sd.query_devices()
    if not len(devices):
        return "no audio devices found (PortAudio sees none; is the sound server running?)"
    return (f"{devices}\n\n> default input, < default output, * both. Choose with --input-device / "
            f"--output-device NAME-SUBSTRING or INDEX.")


@attrs.frozen
class Choice:
    """A device and the format we open it with (16 kHz mono when it takes that, else its own rate/channels)."""

    index: int
    name: str
    rate: int
    channels: int


def choose(spec: str | None, kind: str) -> Choice:
    """Resolve ``--input-device``/``--output-device`` (a name substring, an index, or None for the default).

    ``kind`` is ``"input"`` or ``"output"``. Prefers 16 kHz mono int16; a device that cannot do that
    (raw ALSA hardware often offers only 44.1/48 kHz stereo) is opened at its own rate and channel
    count, and the caller converts.
    """
    sd = sounddevice()
    flag = f"--{kind}-device"
    channels_key = f"max_{kind}_channels"
    try:
        if spec is None:
            info = sd.query_devices(kind=kind)
        else:
            info = sd.query_devices(int(spec) if spec.strip().isdigit() else spec, kind=kind)
    except (ValueError, sd.PortAudioError) as exc:
        if spec is None:
            what = "microphone" if kind == "input" else "speaker"
            raise ConfigError(f"{flag}: no audio {kind} device found (connect a {what}, start the sound server, "
                              f"or {LIST_HINT}); run with --server to go without local audio") from None
        raise ConfigError(f"{flag}: {spec!r}: {exc}; {LIST_HINT}") from None
    if info[channels_key] < 1:
        raise ConfigError(f"{flag}: {info['name']!r} has no {kind} channels; {LIST_HINT}")
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    for rate, channels in ((RATE, 1), (int(info["default_samplerate"]), 1),
                           (RATE, min(2, info[channels_key])), (int(info["default_samplerate"]), min(2, info[channels_key]))):
        try:
            check(device=info["index"], samplerate=rate, channels=channels, dtype="int16")
        except sd.PortAudioError:
            continue
        return Choice(index=info["index"], name=info["name"], rate=rate, channels=channels)
    raise ConfigError(f"{flag}: {info['name']!r} takes neither 16 kHz nor {info['default_samplerate']:.0f} Hz "
                      f"int16 audio; {LIST_HINT}")
