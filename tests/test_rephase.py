"""The clock re-phases on speech after idle and on interrupts: behaviour, on trio's mock clock."""

import numpy as np
import pytest
import trio

from avatard.constants import RATE
from avatard.core.events import EventBus
from avatard.core.frame_clock import MIN_GAP_FRACTION, FrameClock
from avatard.core.latency import LatencyMeter
from avatard.core.messages import Frame, FrameAudio
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
    # A re-phase may follow a regular tick at once; two re-phased ticks keep the minimum gap, so no two
    # intervals in a row are shorter than it (epoch floats resolve ~0.2 µs).
    short = gaps < MIN_GAP_FRACTION * PERIOD - 1e-6
    assert short.any(), "a re-phase after a regular tick goes at once (an interval shorter than the gap)"
    assert not (short[1:] & short[:-1]).any()
    # 2.2 s of plain ticks is 55 frames; each event may add at most one, and the gap bounds the burst.
    assert len(stamps) <= 56 + events
    assert len(stamps) <= 56 + 0.2 / (MIN_GAP_FRACTION * PERIOD) + 1


async def test_a_rephase_just_after_a_tick_is_at_once_and_the_next_keeps_the_gap(autojump_clock):
    clock = FrameClock(FPS, "test")
    _, regular = await clock.next_tick()
    at = trio.current_time()
    clock.rephase()  # the instant the regular tick went out (an answer arriving just after it)
    _, first = await clock.next_tick()
    assert trio.current_time() - at < 0.01 * PERIOD, "no wait for the minimum gap after a regular tick"
    assert first > regular, "but never at the same instant"
    clock.rephase()  # a second event at once: a burst of events is not a burst of frames
    _, second = await clock.next_tick()
    assert second - first == pytest.approx(MIN_GAP_FRACTION * PERIOD, abs=1e-6)
    _, following = await clock.next_tick()
    assert following - second == pytest.approx(PERIOD, abs=1e-6), "the grid goes on from the last re-phase"


async def collect(receive, frames: list, handed_out: list | None = None) -> None:
    """(arrival time, Frame) into ``frames``; every item, FrameAudio included, into ``handed_out``."""
    async for item in receive:
        if handed_out is not None:
            handed_out.append(item)
        if isinstance(item, Frame):
            frames.append((trio.current_time(), item))


def renderer() -> BuiltinRenderer:
    events = EventBus()
    return BuiltinRenderer(width=128, height=128, fps=FPS, events=events, latency=LatencyMeter(events, make_registry()))


async def test_speech_after_idle_and_interrupts_keep_the_frame_invariants(autojump_clock):
    avatar = renderer()
    send, receive = trio.open_memory_channel(1000)
    frames = []
    handed_out = []
    speech = (np.sin(np.arange(RATE) / 5) * 8000).astype(np.int16)
    async with trio.open_nursery() as nursery:
        await nursery.start(avatar.run, send)

        nursery.start_soon(collect, receive, frames, handed_out)
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
    # Each frame's audio was handed out before its picture, with the same samples (silenced alike when an
    # interrupt landed while the picture was being drawn: the fan-out silences stale audio either way).
    assert [type(item) for item in handed_out[:2 * len(frames)]] == [FrameAudio, Frame] * len(frames)
    for sound, (_, frame) in zip(handed_out[0::2], frames):
        assert (sound.index, sound.timestamp) == (frame.index, frame.timestamp)
        assert np.array_equal(sound.audio, frame.audio) or not frame.audio.any()


async def test_a_first_chunk_shorter_than_a_frame_waits_for_a_whole_frame(autojump_clock):
    avatar = renderer()
    send, receive = trio.open_memory_channel(1000)
    frames = []
    speech = (np.sin(np.arange(RATE) / 5) * 8000).astype(np.int16)
    spf = RATE // FPS
    async with trio.open_nursery() as nursery:
        await nursery.start(avatar.run, send)

        nursery.start_soon(collect, receive, frames)
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


async def test_the_push_that_starts_speech_returns_once_its_first_frame_audio_is_out(autojump_clock):
    # While the first frame of an answer goes out, the brain takes no more of it (its parsing would
    # compete with that frame's send); later pushes never wait for a frame.
    avatar = renderer()
    send, receive = trio.open_memory_channel(1000)
    frames, handed_out = [], []
    speech = (np.sin(np.arange(RATE) / 5) * 8000).astype(np.int16)
    spf = RATE // FPS
    async with trio.open_nursery() as nursery:
        await nursery.start(avatar.run, send)
        nursery.start_soon(collect, receive, frames, handed_out)
        await trio.sleep(0.5 + 0.011)
        assert await avatar.push_audio(speech[:spf])
        await trio.sleep(0)  # the collector's turn: what had been handed out by then
        assert any(isinstance(item, FrameAudio) and item.audio.any() for item in handed_out), \
            "push_audio returned before the first frame's audio was handed out"
        with trio.fail_after(1e-6):  # the mock clock: no time passes for a push that does not wait
            assert await avatar.push_audio(speech[spf:2 * spf])
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("before_tick", [0.005, 0.02])  # a tick on the grid inside the wait; the wait ends first
async def test_a_start_short_of_a_frame_goes_out_led_in_once_its_wait_is_over(autojump_clock, before_tick):
    # A model speaking in real time: the rest of the first frame is 40 ms away. The start waits as long as
    # the silence that would lead it in, then goes out with that silence first and the word whole after it.
    avatar = renderer()
    send, receive = trio.open_memory_channel(1000)
    frames = []
    speech = (np.sin(np.arange(RATE) / 5) * 8000).astype(np.int16)
    spf = RATE // FPS
    short = 594  # Gemini's first 40 ms at 24 kHz, out of the resampler (core/audio.SpeechResampler)
    async with trio.open_nursery() as nursery:
        await nursery.start(avatar.run, send)
        nursery.start_soon(collect, receive, frames)
        await trio.sleep(0.5)
        await trio.sleep(frames[-1][0] + PERIOD - before_tick - trio.current_time())
        pushed_at = trio.current_time()
        assert await avatar.push_audio(speech[:short])
        await trio.sleep(0.2)
        rest_at = trio.current_time()
        assert await avatar.push_audio(speech[short:short + 3 * spf])
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    during = [f for t, f in frames if pushed_at <= t < pushed_at + (spf - short) / RATE - 1e-9]
    assert len(during) == (before_tick < (spf - short) / RATE), "a tick on the grid inside the wait, or none"
    assert not any(f.audio.any() for f in during), "the tick inside the wait took none of the word"
    spoken = [(t, f) for t, f in frames if f.audio.any()]
    assert spoken[0][0] == pytest.approx(pushed_at + (spf - short) / RATE), "out once the wait was over"
    first = spoken[0][1].audio
    assert not first[:spf - short].any() and np.array_equal(first[spf - short:], speech[:short]), \
        "silence first, then the whole start of the word"
    later = np.concatenate([f.audio for t, f in frames if t >= rest_at])
    assert np.array_equal(later[np.flatnonzero(later)[0]:][:3 * spf], speech[short:short + 3 * spf]), \
        "the rest follows on"
    assert (np.diff([f.timestamp for _, f in frames]) > 0).all()


async def test_an_idle_frame_whose_follower_is_due_at_once_shows_the_last_picture_again(autojump_clock):
    # Speech that arrives while a silent frame waits to be drawn makes the next frame due at once: that
    # silent frame repeats the last picture instead of drawing one that would be replaced within a few ms.
    avatar = renderer()
    send, receive = trio.open_memory_channel(1000)
    frames, handed_out = [], []
    speech = (np.sin(np.arange(RATE) / 5) * 8000).astype(np.int16)
    spf = RATE // FPS
    pushed = []

    async def push_on_the_next_idle_audio():
        async for item in receive:
            handed_out.append(item)
            if isinstance(item, Frame):
                frames.append(item)
            elif not pushed and trio.current_time() > 0.5:  # an idle frame's audio is out, its picture is not
                pushed.append(item.index)
                assert await avatar.push_audio(speech[:3 * spf])

    async with trio.open_nursery() as nursery:
        await nursery.start(avatar.run, send)
        nursery.start_soon(push_on_the_next_idle_audio)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    by_index = {f.index: f for f in frames}
    reused, before, after = by_index[pushed[0]], by_index[pushed[0] - 1], by_index[pushed[0] + 1]
    assert not reused.audio.any() and reused.image is before.image and reused.mouth == before.mouth
    assert after.audio.any() and after.image is not reused.image, "the answer's first frame is drawn"
    assert after.timestamp - reused.timestamp < 0.01 * PERIOD, "and follows at once (the re-phase)"
    assert avatar.pictures_reused == 1 and avatar.status()["pictures_reused"] == 1
    idle = [f for f in frames if f.index < pushed[0]]
    assert len({id(f.image) for f in idle}) == len(idle), "idle frames with no event pending are drawn"
    assert [f.index for f in frames] == list(range(len(frames))) and all(len(f.audio) == spf for f in frames)
