"""A stand-in for the daemon's encoder in unit tests of the broadcast: real VP8/H.264 and Opus packets.

It encodes a small moving test picture at 25 fps and a tone in 20 ms Opus frames with PyAV, paced in real
time on trio's clock, and yields ``(kind, av.Packet)`` as the encoder's subscription does. Only the
broadcast's own tests use it; the daemon's tests go through the real encoder.
"""

from __future__ import annotations

import fractions

import av
import numpy as np
import trio

FPS = 25
SIZE = 128
AUDIO_RATE = 48000
AUDIO_FRAME = 960  # 20 ms


async def packets(video_codec: str = "vp8", keyframe_every: int = 25):
    video = av.CodecContext.create("libvpx" if video_codec == "vp8" else "libx264", "w")
    video.width = video.height = SIZE
    video.pix_fmt = "yuv420p"
    video.time_base = fractions.Fraction(1, FPS)
    video.bit_rate = 300_000
    video.gop_size = keyframe_every
    video.options = {"deadline": "realtime", "lag-in-frames": "0"} if video_codec == "vp8" else \
        {"tune": "zerolatency", "preset": "ultrafast", "profile": "baseline"}
    audio = av.CodecContext.create("libopus", "w")
    audio.sample_rate = AUDIO_RATE
    audio.format = "s16"
    audio.layout = "stereo"
    audio.time_base = fractions.Fraction(1, AUDIO_RATE)
    audio.bit_rate = 64000
    tone = (np.sin(np.arange(AUDIO_FRAME * 2) * 2 * np.pi * 440 / AUDIO_RATE) * 8000).astype(np.int16)
    start = trio.current_time()
    index = 0
    samples = 0
    while True:
        await trio.sleep_until(start + index / FPS)
        picture = np.zeros((SIZE, SIZE, 3), np.uint8)
        picture[:, (index * 4) % SIZE] = 255
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        frame.time_base = video.time_base
        for packet in video.encode(frame):
            yield "video", packet
        for _ in range(2):  # 40 ms of audio per video frame
            chunk = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout="stereo")
            chunk.sample_rate = AUDIO_RATE
            chunk.pts = samples
            chunk.time_base = audio.time_base
            samples += AUDIO_FRAME
            for packet in audio.encode(chunk):
                yield "audio", packet
        index += 1
