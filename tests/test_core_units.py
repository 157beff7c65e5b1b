"""The daemon's flow-control parts in process, on trio's mock clock: no subprocess, no sockets, no sleeps
on the wall clock. Time only moves when every task is blocked (``autojump_clock``), so "the consumer keeps
up" and "the consumer stalled for 0.4 s" are exact statements, not hopes about a busy machine.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import trio
import trio.testing

from avatard.core.audio import SpeechResampler
from avatard.core.fanout import FanOut
from avatard.core.frame_clock import MAX_LAG_FRAMES, FrameClock
from avatard.core.messages import Frame, FrameAudio
from avatard.renderers.speech_buffer import SpeechBuffer
from avatard.server.access import TALK
from avatard.server.websocket import MAX_AUDIO_BACKLOG, MAX_SEND_STALL, VIDEO_BACKLOG, Client

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

FPS = 25
PERIOD = 1 / FPS
SAMPLES = 16000 // FPS


def make_frame(index: int, generation: int = 0, level: int = 1000) -> Frame:
    return Frame(index=index, timestamp=index * PERIOD, image=np.zeros((4, 4, 3), np.uint8),
                 audio=np.full(SAMPLES, level, np.int16), speaking=True, generation=generation)


# -- fan-out ----------------------------------------------------------------------------------------


class Generation:
    """The renderer's generation counter, as the fan-out sees it."""

    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value


async def drain(frames, into: list) -> None:
    async for frame in frames:
        into.append(frame)


async def test_fanout_every_sink_gets_every_frame_while_it_keeps_up(autojump_clock):
    fanout = FanOut(Generation())
    send, receive = trio.open_memory_channel(2)
    got_a, got_b = [], []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fanout.run, receive)
        with fanout.sink("a", buffer=2) as a, fanout.sink("b", buffer=2) as b:
            nursery.start_soon(drain, a, got_a)
            nursery.start_soon(drain, b, got_b)
            for index in range(100):
                await send.send(make_frame(index))
                await trio.sleep(PERIOD)  # the renderer's pace; both sinks read within it
        nursery.cancel_scope.cancel()
    assert [f.index for f in got_a] == list(range(100))
    assert [f.index for f in got_b] == list(range(100))
    assert fanout.frames_dropped == 0


async def test_fanout_a_stalled_sink_loses_frames_counted_while_another_gets_all(autojump_clock, caplog):
    caplog.set_level(logging.INFO, "avatard.fanout")
    fanout = FanOut(Generation())
    send, receive = trio.open_memory_channel(2)
    got = []
    stalled_got = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fanout.run, receive)
        with fanout.sink("reader", buffer=3) as reader:
            nursery.start_soon(drain, reader, got)
            with fanout.sink("stalled", buffer=3) as stalled:
                for index in range(20):
                    await send.send(make_frame(index))
                    await trio.sleep(PERIOD)
                assert fanout.frames_dropped == 17
                # What the stalled sink still holds is what it had room for: the oldest three.
                for _ in range(3):
                    stalled_got.append(await stalled.__anext__())
            # After it leaves, frames keep flowing to the reader, and nothing more is counted against it.
            for index in range(20, 30):
                await send.send(make_frame(index))
                await trio.sleep(PERIOD)
        nursery.cancel_scope.cancel()
    assert [f.index for f in got] == list(range(30))
    assert [f.index for f in stalled_got] == [0, 1, 2]
    assert fanout.frames_dropped == 17
    assert "sink stalled dropped 17 frames" in caplog.text
    assert "sink reader dropped" not in caplog.text


async def test_fanout_silences_frames_queued_before_an_interrupt(autojump_clock):
    generation = Generation()
    fanout = FanOut(generation)
    send, receive = trio.open_memory_channel(2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fanout.run, receive)
        with fanout.sink("late", buffer=10) as late:
            old = make_frame(0, generation=0)
            await send.send(old)
            await trio.testing.wait_all_tasks_blocked()  # the frame sits in the sink's queue
            generation.value = 1  # the interrupt
            current = make_frame(1, generation=1)
            await send.send(current)
            await trio.testing.wait_all_tasks_blocked()
            first = await late.__anext__()
            second = await late.__anext__()
        nursery.cancel_scope.cancel()
    assert first.index == 0 and first.image is old.image
    assert not first.audio.any() and first.audio.shape == old.audio.shape and first.audio.dtype == np.int16
    assert first.speaking is False and first.generation == 1
    assert old.audio.all(), "the renderer's frame itself is left alone (other sinks may share it)"
    assert second is current  # current frames pass untouched


async def test_fanout_gives_audio_only_sinks_the_audio_handed_out_at_the_tick(autojump_clock):
    generation = Generation()
    fanout = FanOut(generation)
    send, receive = trio.open_memory_channel(4)
    heard, seen = [], []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fanout.run, receive)
        with fanout.sink("speaker", buffer=10, audio_only=True) as speaker, fanout.sink("window", buffer=10) as window:
            nursery.start_soon(drain, speaker, heard)
            nursery.start_soon(drain, window, seen)
            for index in range(3):
                frame = make_frame(index)
                await send.send(FrameAudio.of(frame))
                await send.send(frame)
            stale = make_frame(3, generation=0)
            await send.send(FrameAudio.of(stale))
            await trio.testing.wait_all_tasks_blocked()
            generation.value = 1  # the interrupt
            await send.send(FrameAudio.of(make_frame(4, generation=0)))  # rendered before the interrupt
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [type(item) for item in heard] == [FrameAudio] * 5 and [a.index for a in heard] == [0, 1, 2, 3, 4]
    assert [type(item) for item in seen] == [Frame] * 3 and [f.index for f in seen] == [0, 1, 2]
    assert heard[3].audio.all(), "audio taken before the interrupt plays"
    assert not heard[4].audio.any() and heard[4].generation == 1 and heard[4].speaking is False, \
        "audio from before an interrupt is silenced where it leaves the fan-out, like a frame's"


async def test_fanout_sink_unregisters_on_exit(autojump_clock):
    fanout = FanOut(Generation())
    send, receive = trio.open_memory_channel(2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fanout.run, receive)
        with fanout.sink("gone", buffer=1) as gone:
            pass
        # Its channel is closed; were it still registered, the fan-out would fail on the closed channel
        # or count drops against a sink nobody reads.
        with fanout.sink("here", buffer=1) as here:
            for index in range(5):
                await send.send(make_frame(index))
                assert (await here.__anext__()).index == index
        with pytest.raises(trio.ClosedResourceError):
            await gone.__anext__()
        await send.send(make_frame(5))  # no sinks at all: nothing to do, nothing to count
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert fanout.frames_dropped == 0


# -- speech buffer ----------------------------------------------------------------------------------


def ramp(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int16)


async def test_speech_take_pads_with_zeros_and_reports_real_samples():
    buffer = SpeechBuffer(max_samples=1000)
    assert await buffer.put(ramp(1, 100))
    assert await buffer.put(ramp(101, 100))
    out, real = buffer.take(150)  # across the chunk boundary
    assert real == 150 and out.dtype == np.int16 and list(out) == list(range(1, 151))
    out, real = buffer.take(SAMPLES)
    assert real == 50 and len(out) == SAMPLES
    assert list(out[:50]) == list(range(151, 201)) and not out[50:].any()
    out, real = buffer.take(SAMPLES)
    assert real == 0 and len(out) == SAMPLES and not out.any()
    assert buffer.pending == 0


async def test_speech_put_waits_when_full_and_resumes_when_take_makes_room(autojump_clock):
    buffer = SpeechBuffer(max_samples=320)
    assert await buffer.put(ramp(0, 320))
    done = []

    async def producer():
        done.append(await buffer.put(ramp(320, 160)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert done == [] and buffer.pending == 320
        buffer.take(80)  # room for 80: not enough for 160, it keeps waiting
        await trio.testing.wait_all_tasks_blocked()
        assert done == [] and buffer.pending == 240
        buffer.take(80)
        await trio.testing.wait_all_tasks_blocked()
        assert done == [True] and buffer.pending == 320
    out, real = buffer.take(320)
    assert real == 320 and list(out) == list(range(160, 480)), "nothing lost, nothing reordered"


async def test_speech_clear_wakes_a_waiting_put_which_returns_false_and_discards(autojump_clock):
    buffer = SpeechBuffer(max_samples=320)
    assert await buffer.put(ramp(0, 320))
    done = []

    async def producer():
        done.append(await buffer.put(ramp(320, 160)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        assert buffer.clear() == 320
    assert done == [False]
    assert buffer.pending == 0
    out, real = buffer.take(SAMPLES)
    assert real == 0 and not out.any(), "neither the queued nor the waiting samples survive the interrupt"
    assert await buffer.put(ramp(1, 10)), "the next generation's speech goes through"
    assert buffer.take(10)[1] == 10


async def test_speech_chunk_bigger_than_the_buffer_goes_through_in_parts(autojump_clock):
    buffer = SpeechBuffer(max_samples=320)
    speech = ramp(0, 1000)
    result = []
    heard = []
    peak = []

    async def producer():
        result.append(await buffer.put(speech))

    async def clock():
        while not result or buffer.pending:
            peak.append(buffer.pending)
            out, real = buffer.take(SAMPLES)
            heard.append(out[:real])
            await trio.sleep(PERIOD)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        nursery.start_soon(clock)
    assert result == [True]
    assert max(peak) == 320, "the producer waited for room: the buffer never held more than its size"
    assert list(np.concatenate(heard)) == list(speech)


# -- frame clock -----------------------------------------------------------------------------------


async def test_frame_clock_ticks_exactly_one_period_apart(autojump_clock):
    clock = FrameClock(FPS, "test")
    start = trio.current_time()
    ticks = [await clock.next_tick()]
    for _ in range(250):
        ticks.append(await clock.next_tick())
        assert trio.current_time() - start == pytest.approx((len(ticks) - 1) * PERIOD, abs=1e-9)
    assert trio.current_time() - start == pytest.approx(250 / FPS, abs=1e-9)
    assert [index for index, _ in ticks] == list(range(251))
    assert np.allclose(np.diff([pts for _, pts in ticks]), PERIOD, rtol=0, atol=1e-6)
    assert clock.skipped == 0


async def test_frame_clock_does_not_drift_when_each_frame_takes_time(autojump_clock):
    clock = FrameClock(FPS, "test")
    start = trio.current_time()
    for _ in range(100):
        await clock.next_tick()
        await trio.sleep(PERIOD * 0.9)  # rendering nearly fills the period
    assert trio.current_time() - start == pytest.approx(99 * PERIOD + PERIOD * 0.9, abs=1e-9)
    assert clock.skipped == 0


async def test_frame_clock_a_short_stall_catches_up_without_skipping(autojump_clock):
    clock = FrameClock(FPS, "test")
    await clock.next_tick()
    await trio.sleep(MAX_LAG_FRAMES * PERIOD * 0.9)
    indices = [(await clock.next_tick())[0] for _ in range(MAX_LAG_FRAMES + 2)]
    assert indices == list(range(1, MAX_LAG_FRAMES + 3)) and clock.skipped == 0


@pytest.mark.parametrize("stall_periods", [MAX_LAG_FRAMES + 2, 10, 15, 29, 37, 250])
async def test_frame_clock_skips_ahead_after_a_long_stall(autojump_clock, stall_periods):
    clock = FrameClock(FPS, "test")
    start = trio.current_time()
    index, first_pts = await clock.next_tick()
    assert index == 0
    await trio.sleep(stall_periods * PERIOD)  # the consumer stalls
    stalled_until = trio.current_time()
    index, pts = await clock.next_tick()
    assert trio.current_time() == stalled_until, "the late tick comes at once"
    # The tick due now, not the first missed one: everything between was skipped and counted.
    assert index == stall_periods and clock.skipped == stall_periods - 1
    assert pts - first_pts == pytest.approx(stall_periods * PERIOD, abs=1e-6)
    # No burst: the next tick waits a whole period, on the original grid.
    index, _ = await clock.next_tick()
    assert index == stall_periods + 1
    assert trio.current_time() - start == pytest.approx((stall_periods + 1) * PERIOD, abs=1e-9)


# -- per-client backlog (server/websocket.py) -------------------------------------------------------


class FakeWs:
    """The one method a Client's sender uses; ``block()`` makes it a peer that stopped reading."""

    def __init__(self) -> None:
        self.sent: list = []
        self._open = trio.Event()
        self._open.set()

    def block(self) -> None:
        self._open = trio.Event()

    def unblock(self) -> None:
        self._open.set()

    async def send_message(self, message) -> None:
        await self._open.wait()
        self.sent.append(message)


async def run_client(client: Client, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """As WsServer._run_client runs one: the sender inside the client's scope."""
    with client.scope:
        task_status.started()
        await client.sender()


def video(n: int) -> bytes:
    return b"V%d" % n


def audio(n: int) -> bytes:
    return b"A%d" % n


async def test_client_keeping_up_gets_everything_in_order(autojump_clock):
    ws = FakeWs()
    client = Client("client_1", ws, "test", TALK)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_client, client)
        for n in range(50):
            client.push_audio(audio(n))
            client.push_video(video(n))
            await trio.sleep(PERIOD)
        nursery.cancel_scope.cancel()
    expected = [m for n in range(50) for m in (audio(n), video(n))]
    assert ws.sent == expected
    assert client.video_dropped == 0 and client.frames_sent == 50 and not client.too_slow


async def test_client_video_backlog_keeps_the_newest_and_counts_the_dropped(autojump_clock):
    ws = FakeWs()
    client = Client("client_1", ws, "test", TALK)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_client, client)
        ws.block()
        client.push_video(video(0))
        await trio.testing.wait_all_tasks_blocked()  # the sender is stuck sending frame 0
        for n in range(1, 9):
            client.push_video(video(n))
        assert client.video_dropped == 8 - VIDEO_BACKLOG
        ws.unblock()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert ws.sent == [video(0)] + [video(n) for n in range(9 - VIDEO_BACKLOG, 9)]
    assert client.frames_sent == 1 + VIDEO_BACKLOG
    assert client.info()["video_dropped"] == 8 - VIDEO_BACKLOG
    assert not client.too_slow, "dropping video is how a slow client is kept, not a reason to drop it"


async def test_client_too_far_behind_on_audio_is_disconnected(autojump_clock):
    ws = FakeWs()
    client = Client("client_1", ws, "test", TALK)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_client, client)
        ws.block()
        client.push_audio(audio(0))
        await trio.testing.wait_all_tasks_blocked()  # in flight, stuck
        for n in range(1, MAX_AUDIO_BACKLOG + 2):  # a full backlog is still kept (nothing dropped)
            client.push_audio(audio(n))
            await trio.sleep(PERIOD / 100)  # well inside MAX_SEND_STALL
        assert not client.too_slow and not client.scope.cancel_called
        client.push_audio(audio(MAX_AUDIO_BACKLOG + 2))  # more than MAX_AUDIO_BACKLOG queued: too slow
        assert client.too_slow and client.scope.cancel_called
    assert client.scope.cancelled_caught, "the stuck send was cancelled: the sender is gone"
    assert ws.sent == []
    client.push_video(video(0))
    assert client.info()["queued"] == MAX_AUDIO_BACKLOG + 1, "nothing more is queued for a client on its way out"


async def test_client_send_stalled_past_the_limit_is_disconnected_on_the_next_push(autojump_clock):
    ws = FakeWs()
    client = Client("client_1", ws, "test", TALK)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_client, client)
        ws.block()
        client.push_json('{"event": "status"}')
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(MAX_SEND_STALL - 0.1)
        client.push_audio(audio(1))  # slow, but not stalled for long enough yet
        assert not client.too_slow
        await trio.sleep(0.2)
        assert not client.too_slow, "the stall is noticed on a push, not by a timer"
        client.push_audio(audio(2))
        assert client.too_slow and client.scope.cancel_called
    assert client.scope.cancelled_caught and ws.sent == []


async def test_client_slow_sends_that_complete_are_not_a_stall(autojump_clock):
    ws = FakeWs()
    client = Client("client_1", ws, "test", TALK)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_client, client)
        for n in range(3):
            ws.block()
            client.push_audio(audio(n))
            await trio.sleep(MAX_SEND_STALL - 0.5)
            ws.unblock()
            await trio.sleep(1.0)  # idle: no send in progress, however long
            client.push_audio(audio(100 + n))
            assert not client.too_slow
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert ws.sent == [audio(0), audio(100), audio(1), audio(101), audio(2), audio(102)]


async def test_client_flush_audio_keeps_json_in_order(autojump_clock):
    ws = FakeWs()
    client = Client("client_1", ws, "test", TALK)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_client, client)
        ws.block()
        client.push_json("j0")
        await trio.testing.wait_all_tasks_blocked()
        client.push_audio(audio(1))
        client.push_json("j1")
        client.push_audio(audio(2))
        client.push_video(video(2))
        client.push_json("j2")
        client.push_audio(audio(3))
        client.flush_audio()  # the interrupt
        client.push_json("interrupted")
        client.push_audio(audio(4))  # the next generation's audio
        ws.unblock()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert ws.sent == ["j0", "j1", "j2", "interrupted", audio(4), video(2)]


async def test_client_flush_audio_resets_the_backlog_count(autojump_clock):
    ws = FakeWs()
    client = Client("client_1", ws, "test", TALK)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_client, client)
        ws.block()
        client.push_json("j0")
        await trio.testing.wait_all_tasks_blocked()
        for n in range(MAX_AUDIO_BACKLOG):
            client.push_audio(audio(n))
        client.flush_audio()
        for n in range(MAX_AUDIO_BACKLOG):
            client.push_audio(audio(n))
        assert not client.too_slow, "flushed audio no longer counts against the client"
        nursery.cancel_scope.cancel()


async def test_client_that_does_not_want_video_or_audio_gets_none(autojump_clock):
    ws = FakeWs()
    client = Client("client_1", ws, "test", TALK)
    client.want_video = False
    client.want_audio = False
    async with trio.open_nursery() as nursery:
        await nursery.start(run_client, client)
        for n in range(MAX_AUDIO_BACKLOG * 2):
            client.push_audio(audio(n))
            client.push_video(video(n))
        client.push_json("j")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert ws.sent == ["j"]
    assert client.video_dropped == 0 and not client.too_slow


async def test_client_audio_only_and_video_only(autojump_clock):
    audio_ws, video_ws = FakeWs(), FakeWs()
    audio_only = Client("client_1", audio_ws, "test", TALK)
    audio_only.want_video = False
    video_only = Client("client_2", video_ws, "test", TALK)
    video_only.want_audio = False
    async with trio.open_nursery() as nursery:
        await nursery.start(run_client, audio_only)
        await nursery.start(run_client, video_only)
        for n in range(10):
            for client in (audio_only, video_only):
                client.push_audio(audio(n))
                client.push_video(video(n))
            await trio.sleep(PERIOD)
        nursery.cancel_scope.cancel()
    assert audio_ws.sent == [audio(n) for n in range(10)]
    assert video_ws.sent == [video(n) for n in range(10)]


def test_a_peer_that_went_away_ends_only_its_connection():
    from wsproto.utilities import LocalProtocolError

    from avatard.server.websocket import peer_went_away

    pong_while_closing = LocalProtocolError("Event Pong(payload=b'') cannot be sent in state LOCAL_CLOSING.")
    assert peer_went_away(trio.BrokenResourceError()) and peer_went_away(pong_while_closing)
    assert peer_went_away(BaseExceptionGroup("reader", [pong_while_closing, trio.ClosedResourceError()]))
    assert not peer_went_away(BaseExceptionGroup("reader", [pong_while_closing, ValueError("a bug")]))
    assert not peer_went_away(KeyError("a bug"))


# -- the model's speech resampler (core/audio.SpeechResampler) ---------------------------------------------------------


def _tone(hz: float, seconds: float, rate: int = 24000) -> np.ndarray:
    return (np.sin(2 * np.pi * hz * np.arange(round(rate * seconds)) / rate) * 16000).astype(np.int16)


def _level_db(samples: np.ndarray, hz: float, amplitude: float = 16000, rate: int = 16000) -> float:
    """Level of the ``hz`` component of ``samples`` relative to a sine of ``amplitude``."""
    t = np.arange(len(samples)) / rate
    x = samples.astype(np.float64)
    magnitude = np.hypot(x @ np.cos(2 * np.pi * hz * t), x @ np.sin(2 * np.pi * hz * t)) * 2 / len(x)
    return 20 * np.log10(magnitude / amplitude + 1e-12)


def _through(resampler, samples: np.ndarray, chunk: int = 960) -> list[np.ndarray]:
    return [resampler.process(samples[i:i + chunk]) for i in range(0, len(samples), chunk)]


@pytest.mark.parametrize("hz", [300, 1000, 4000, 7000])
def test_speech_resampler_keeps_the_voice_band(hz):
    out = np.concatenate(_through(SpeechResampler(24000), _tone(hz, 1.0)))
    assert abs(_level_db(out[2000:14000], hz)) < 0.5


@pytest.mark.parametrize("hz", [9000, 10000, 11000])
def test_speech_resampler_rejects_what_would_alias_into_it(hz):
    out = np.concatenate(_through(SpeechResampler(24000), _tone(hz, 1.0)))
    assert _level_db(out[2000:14000], 16000 - hz) < -90, "above 8 kHz folds back into the voice band"


def test_speech_resampler_gives_each_chunk_as_it_comes_and_the_look_ahead_at_the_end():
    resampler = SpeechResampler(24000)
    speech = _tone(440, 0.48)  # twelve of Gemini's 40 ms chunks
    sizes = [len(out) for out in _through(resampler, speech)]
    assert sizes[0] >= 590 and sizes[1:] == [640] * 11, "evenly: each chunk's worth as it comes, bar the look-ahead"
    tail = resampler.process(np.zeros(0, dtype=np.int16), last=True)
    assert sizes[0] + sum(sizes[1:]) + len(tail) >= len(speech) * 2 // 3, "nothing of the speech held back at the end"
    assert np.abs(tail[:640 - sizes[0]]).max() > 8000, "the look-ahead is the speech's last samples"
    assert len(resampler.process(np.zeros(0, dtype=np.int16), last=True)) == 0, "a second end gives nothing"
    assert [len(out) for out in _through(resampler, speech[:1920])] == sizes[:2], "then it starts over"
    resampler.reset()
    assert not resampler.process(np.zeros(960, dtype=np.int16)).any(), "a reset forgets what was held back"
