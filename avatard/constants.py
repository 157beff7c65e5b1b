"""The names and numbers every part of avatard agrees on, defined once.

Pure data: no I/O, no avatard import, so the wire protocols, the daemon and ``avatarctl`` share it.
"""

from __future__ import annotations

# The daemon's internal audio: 16 kHz mono int16. What the renderer consumes (exactly RATE/fps samples
# per frame, so fps must divide it), what Gemini Live takes as input, what the seed protocol sends.
RATE = 16000

# A turn longer than this is a paste accident, not speech (and TTS time grows with it).
MAX_TEXT_CHARS = 2000

# Event kinds on the event bus (avatard.core.events), in the control protocol and in `avatarctl subscribe`.
EVENT_KINDS = ("status", "transcription", "gesture", "client", "latency", "error", "frame", "presence")
# Per-frame events come 25 a second; only subscribers that name them get them.
FRAME_KIND = "frame"
# What browsers receive over the WebSocket (the seed protocol's JSON messages).
BROWSER_EVENT_KINDS = frozenset({"status", "transcription", "gesture", "latency", "error"})

# The built-in avatar's gestures (also the names bitHuman's models commonly use) -> duration in seconds.
# Long enough to read (a wave needs ~3 rocks, a nod two dips), short enough not to hijack a conversation
# turn. Multiples of 40 ms, so they are whole frames at 25 fps.
GESTURES: dict[str, float] = {
    "heart_gesture": 2.4,
    "laugh_react": 1.6,
    "mini_wave_hello": 2.0,
    "nod_agree": 1.6,
    "thumbs_up": 1.6,
}

# Camera frames for the model. Gemini Live takes JPEG frames at up to 1 per second (gemini_live_2026.md, "video
# input", every generation); 768 px on the long side is what the Live guides' examples send and enough to read a
# label, and a bigger picture costs more tokens without the model seeing more.
MAX_CAMERA_FPS = 1.0
MAX_IMAGE_SIDE = 768
# A browser's JPEG of at most 768 px is 50-200 KB at the quality browsers use; more is a picture that was not
# scaled. 512 KiB is 683 KiB in base64, inside the WebSocket's 1 MiB message limit, so an oversized frame gets an
# error reply naming this limit rather than a closed connection. An operator's still has the same limit.
MAX_IMAGE_BYTES = 512 * 1024
# The gesture played with a --greet greeting (the built-in avatar has it; a bitHuman model may not).
GREET_GESTURE = "mini_wave_hello"
