"""The clock re-phases on speech after idle and on interrupts: behaviour, on trio's mock clock."""

import numpy as np
import pytest
import trio

from avatard.constants import RATE
from avatard.core.events import EventBus
from avatard.core.frame_clock import MIN_GAP_FRACTION, FrameClock
from avatard.core.latency import LatencyMeter
from avatard.core.metrics import make_registry
from avatard.renderers.builtin import BuiltinRenderer

FPS = 25
PERIOD = 1 / FPS


async def test_rephase_makes_the_next_tick_due_now_and_the_grid_continues(autojump_clock):
    clock = FrameClock(FPS, "test")
    ticks = [await clock.next_tick() for _ in range(3)]
    await trio.sleep(0.013)  # somewhere inside the period after tick 2
    before = trio.current_time()
    clock.rephase()
    index, stamp = await clock.next_tick()
    assert trio.current_time() == pytest.approx(before)  # no wait for the grid
    assert index == 3 and stamp > ticks[-1][1]
    following = [await clock.next_tick() for _ in range(5)]
    gaps = np.diff([stamp] + [s for _, s in following])
    assert np.allclose(gaps, PERIOD), "the 1/fps grid goes on from the re-phased tick"
    assert [i for i, _ in following] == [4, 5, 6, 7, 8]
    assert clock.rephased == 1


async def test_a_burst_of_events_is_at_most_one_frame_each_and_never_closer_than_the_gap(autojump_clock):
    clock = FrameClock(FPS, "test")
    stamps = []
    async with trio.open_nursery() as nursery:
        async def consume():
            while True:
                stamps.append((await clock.next_tick())[1])

        nursery.start_soon(consume)
        await trio.sleep(1.0)
        events = 0
        for _ in range(200):  # 200 interrupts/speech starts within 0.2 s
            clock.rephase()
            events += 1
            await trio.sleep(0.001)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    gaps = np.diff(stamps)
    assert (gaps > 0).all(), "timestamps strictly increase"
    assert gaps.min() >= MIN_GAP_FRACTION * PERIOD - 1e-6  # epoch floats resolve ~0.2 µs
    # 2.2 s of plain ticks is 55 frames; each event may add at most one, and the gap bounds the burst.
    assert len(stamps) <= 56 + events
    assert len(stamps) <= 56 + 0.2 / (MIN_GAP_FRACTION * PERIOD) + 1


def renderer() -> BuiltinRenderer:
    events = EventBus()
    return BuiltinRenderer(width=128, height=128, fps=FPS, events=events, latency=LatencyMeter(events, make_registry()))


async def test_speech_after_idle_and_interrupts_keep_the_frame_invariants(autojump_clock):
    avatar = renderer()
    send, receive = trio.open_memory_channel(1000)
    frames = []
    speech = (np.sin(np.arange(RATE) / 5) * 8000).astype(np.int16)
    async with trio.open_nursery() as nursery:
        await nursery.start(avatar.run, send)

        async def collect():
            async for frame in receive:
                frames.append((trio.current_time(), frame))

        nursery.start_soon(collect)
        await trio.sleep(0.5)
        for _ in range(5):
            await trio.sleep(0.017)  # a phase that is not the grid's
            pushed_at = trio.current_time()
            assert await avatar.push_audio(speech[:RATE // 2])
            await trio.sleep(0)
            await trio.sleep(0.3)
            first_speaking = next(t for t, f in frames if t >= pushed_at and f.audio.any())
            assert first_speaking == pytest.approx(pushed_at), "the first speech frame did not wait for a tick"
            interrupted_at = trio.current_time()
            avatar.interrupt()
            await trio.sleep(0.1)
            after = [f for t, f in frames if t >= interrupted_at]
            assert not after[0].audio.any() and after[0].mouth == 0.0, "the next frame is silent, mouth shut"
            assert frames[[t for t, _ in frames].index(next(t for t, _ in frames if t >= interrupted_at))][0] == \
                pytest.approx(interrupted_at)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    stamps = np.array([f.timestamp for _, f in frames])
    assert all(len(f.audio) == RATE // FPS for _, f in frames)
    assert (np.diff(stamps) > 0).all()
    assert [f.index for _, f in frames] == list(range(len(frames)))
    elapsed = frames[-1][0] - frames[0][0]
    assert len(frames) <= elapsed * FPS + 1 + 10  # fps, plus at most one per event (5 speech starts + 5 interrupts)
    # Over any one-second window: fps frames plus the events inside it.
    times = np.array([t for t, _ in frames])
    for start in times:
        assert ((times >= start) & (times < start + 1.0)).sum() <= FPS + 10


async def test_a_first_chunk_shorter_than_a_frame_waits_for_a_whole_frame(autojump_clock):
    avatar = renderer()
    send, receive = trio.open_memory_channel(1000)
    frames = []
    speech = (np.sin(np.arange(RATE) / 5) * 8000).astype(np.int16)
    spf = RATE // FPS
    async with trio.open_nursery() as nursery:
        await nursery.start(avatar.run, send)

        async def collect():
            async for frame in receive:
                frames.append((trio.current_time(), frame))

        nursery.start_soon(collect)
        await trio.sleep(0.5 + 0.011)
        first_at = trio.current_time()
        assert await avatar.push_audio(speech[:spf // 2])  # like Gemini's first chunk out of the resampler
        await trio.sleep(0.003)
        assert not any(f.audio.any() for t, f in frames if t >= first_at), "no half-empty frame rendered early"
        second_at = trio.current_time()
        assert await avatar.push_audio(speech[spf // 2:2 * spf])
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    spoken = [(t, f) for t, f in frames if f.audio.any()]
    assert spoken[0][0] == pytest.approx(second_at), "re-phased once a whole frame was queued"
    assert np.array_equal(spoken[0][1].audio, speech[:spf]), "the first frame is whole: no silence inside the word"
