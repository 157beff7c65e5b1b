"""The encode-once sink (avatard.media.encoder) in process: real libvpx/libopus through PyAV, a real FanOut, and
PyAV's decoders to check that what comes out is what a viewer can play. No sockets, no sleeps: each test feeds a
frame and waits for what it must produce (``fail_after`` only guards against a hang)."""

from __future__ import annotations

import av
import numpy as np
import pytest
import trio
import trio.testing

from avatard.core.fanout import FanOut
from avatard.core.messages import Frame
from avatard.media.encoder import (
    AUDIO,
    KEYFRAME_INTERVAL,
    KEYFRAME_MIN_GAP,
    OPUS_FRAME,
    OPUS_RATE,
    VIDEO,
    VIDEO_BUFFER,
    MediaEncoder,
)

FPS = 25
SAMPLES = 16000 // FPS
WIDTH, HEIGHT = 96, 64
HANG = 20  # seconds: only a broken encoder takes this long


class Generation:
    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value


def make_frame(index: int, generation: int = 0) -> Frame:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[:, :, 1] = np.linspace(0, 255, WIDTH, dtype=np.uint8)
    image[10:30, (index * 3) % (WIDTH - 20):(index * 3) % (WIDTH - 20) + 20] = (0, 0, 255)  # a moving square
    tone = (3000 * np.sin(2 * np.pi * 440 * (np.arange(SAMPLES) + index * SAMPLES) / 16000)).astype(np.int16)
    return Frame(index=index, timestamp=1000.0 + index / FPS, image=image, audio=tone, speaking=True,
                 generation=generation)


class Rig:
    """A FanOut fed by hand and a MediaEncoder running on it."""

    def __init__(self, nursery: trio.Nursery, **kwargs) -> None:
        self.generation = Generation()
        self.fanout = FanOut(self.generation)
        self.send, receive = trio.open_memory_channel(2)
        self.encoder = MediaEncoder(self.fanout, **kwargs)
        nursery.start_soon(self.fanout.run, receive)
        self.index = 0

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self.encoder.run, FPS)

    async def push(self) -> Frame:
        frame = make_frame(self.index, self.generation.value)
        self.index += 1
        await self.send.send(frame)
        return frame


async def take(sub, n: int) -> list:
    got = []
    with trio.fail_after(HANG):
        async for packet in sub:
            got.append(packet)
            if len(got) == n:
                return got
    return got


async def test_every_subscriber_gets_the_same_packets_keyframe_first_and_a_decoder_plays_them(nursery):
    rig = Rig(nursery)
    await rig.start(nursery)
    with rig.encoder.subscribe("a", VIDEO) as a, rig.encoder.subscribe("b", VIDEO) as b, \
            rig.encoder.subscribe("c", AUDIO, buffer=32) as c:  # read after all 10 frames
        video_a, video_b, audio = [], [], []
        for _ in range(10):
            await rig.push()
            video_a += await take(a, 1)
            video_b += await take(b, 1)
        audio = await take(c, 16)  # 10 frames of 40 ms = 20 packets of 20 ms, less the resampler's delay
    assert [p is q for p, q in zip(video_a, video_b)] == [True] * 10  # encoded once, shared
    assert video_a[0].keyframe and video_a[0].codec == "vp8"
    assert [p.pts for p in video_a] == [round(i / FPS * 90000) for i in range(10)]
    decoder = av.CodecContext.create("libvpx", "r")
    pictures = [f for p in video_a for f in decoder.decode(p.to_av_packet())]
    assert len(pictures) == 10 and (pictures[0].width, pictures[0].height) == (WIDTH, HEIGHT)
    decoded = np.array(pictures[-1].to_ndarray(format="bgr24"), dtype=np.int16)
    assert np.abs(decoded - make_frame(9).image).mean() < 12  # the picture survived (lossy, but close)
    assert all(p.kind == AUDIO and p.codec == "opus" for p in audio)
    assert [p.pts - audio[0].pts for p in audio] == [i * OPUS_FRAME for i in range(16)]
    opus = av.CodecContext.create("libopus", "r")
    opus.sample_rate, opus.layout = OPUS_RATE, "mono"
    lengths = [f.samples for p in audio for f in opus.decode(p.to_av_packet())]
    assert lengths == [OPUS_FRAME] * 16  # 20 ms frames, as the browser wants them
    assert rig.encoder.status()["frames_encoded"] == 10


async def test_nothing_is_encoded_while_nobody_subscribes(nursery):
    rig = Rig(nursery)
    await rig.start(nursery)
    for _ in range(5):
        await rig.push()
    await trio.testing.wait_all_tasks_blocked()
    assert rig.encoder.status()["frames_encoded"] == 0 and rig.encoder.status()["audio_packets"] == 0
    with rig.encoder.subscribe("late", VIDEO) as late:
        await rig.push()
        (first,) = await take(late, 1)
    assert first.keyframe  # the first subscriber starts at a keyframe, whatever the interval says


async def test_a_stalled_subscriber_loses_packets_counted_and_resumes_at_a_keyframe_while_another_gets_all(nursery):
    rig = Rig(nursery)
    await rig.start(nursery)
    with rig.encoder.subscribe("reader", VIDEO) as reader, rig.encoder.subscribe("stalled", VIDEO) as stalled:
        got = []
        for _ in range(VIDEO_BUFFER + 6):
            await rig.push()
            got += await take(reader, 1)
        assert reader.dropped == 0 and len(got) == VIDEO_BUFFER + 6
        assert stalled.dropped == 6 and stalled.needs_keyframe
        backlog = await take(stalled, VIDEO_BUFFER)  # what it had before it fell behind: a clean start
        assert backlog[0].keyframe
        while stalled.needs_keyframe:  # the keyframe it asked for comes within KEYFRAME_MIN_GAP; no video until then
            await rig.push()
            await take(reader, 1)  # offered to both in one go: once the reader has it, the stalled one was offered it
        resumed = await take(stalled, 1)
        assert resumed[0].keyframe
        assert reader.dropped == 0
    assert rig.encoder.status()["packets_dropped"] >= 6


async def test_keyframes_every_interval_and_on_request_at_most_one_per_gap(nursery, mock_clock):
    rig = Rig(nursery)
    await rig.start(nursery)
    with rig.encoder.subscribe("v", VIDEO) as sub:
        async def next_is_key() -> bool:
            await rig.push()
            (packet,) = await take(sub, 1)
            return packet.keyframe

        assert await next_is_key()
        assert not await next_is_key()
        mock_clock.jump(KEYFRAME_INTERVAL)
        assert await next_is_key()
        rig.encoder.request_keyframe()
        assert not await next_is_key()  # asked too soon after the last one: deferred, not forgotten
        mock_clock.jump(KEYFRAME_MIN_GAP)
        assert await next_is_key()
        assert not await next_is_key()


async def test_audio_encoded_before_an_interrupt_is_not_delivered_after_it(nursery):
    rig = Rig(nursery)
    await rig.start(nursery)
    with rig.encoder.subscribe("a", AUDIO) as sub, rig.encoder.subscribe("probe", AUDIO) as probe:
        for _ in range(3):
            await rig.push()
        await take(probe, 4)  # offered to both at once: "a" holds these 4 too, unread
        rig.generation.value += 1
        rig.encoder.flush()
        frame = await rig.push()
        (packet,) = await take(sub, 1)
    assert packet.generation == frame.generation == 1
    assert sub.stale >= 4


@pytest.mark.parametrize("codec", ["h264"])
async def test_h264_is_an_option(nursery, codec):
    rig = Rig(nursery, codec=codec)
    await rig.start(nursery)
    with rig.encoder.subscribe("v", VIDEO) as sub:
        packets = []
        for _ in range(3):
            await rig.push()
            packets += await take(sub, 1)
    assert packets[0].keyframe and packets[0].codec == "h264"
    decoder = av.CodecContext.create("h264", "r")
    assert len([f for p in packets for f in decoder.decode(p.to_av_packet())]) >= 1


async def test_audio_goes_out_as_it_comes_two_packets_a_frame(nursery):
    # A renderer frame (40 ms) is two 20 ms Opus packets. The resampler gives each frame's worth as it comes;
    # soxr's bursts gave 1, 2, 1, 3, ... packets a frame, every fourth frame's sound up to 20 ms late.
    rig = Rig(nursery)
    await rig.start(nursery)
    with rig.encoder.subscribe("a", AUDIO, buffer=64) as audio:
        await rig.push()
        await take(audio, 1)  # the first frame, less the resampler's look-ahead
        for _ in range(12):
            await rig.push()
            with trio.fail_after(2):
                await take(audio, 2)
        await trio.sleep(0.2)
        assert audio.delivered == 25, "and no more than two"
