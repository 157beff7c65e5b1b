"""avatard.core.aio_bridge: asyncio SDKs from trio.

First the bridge alone (results, errors, cancellation both ways, backpressure, shutdown), then the real google-genai
Live client through the bridge against tests/gemini_live_server.py.
"""

from __future__ import annotations

import array
import asyncio
import functools
import math
import os
import statistics
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from gemini_live_server import CHUNK_MS, OUTPUT_RATE, GeminiLiveTestServer
from google import genai
from google.genai import errors, types

from avatard.core.aio_bridge import AsyncioCancelledError, open_asyncio_loop

pytestmark = pytest.mark.trio

MODEL = "gemini-2.5-flash-native-audio-preview-12-2025"  # a served 2.5 id: one part per message


# --- the bridge alone -----------------------------------------------------------------------------------------------


async def test_run_returns_result_from_the_asyncio_thread() -> None:
    async def where(x: int) -> tuple[int, int, bool]:
        return x * 2, threading.get_ident(), isinstance(asyncio.get_running_loop(), asyncio.SelectorEventLoop)

    async with open_asyncio_loop() as aio:
        doubled, thread_id, selector = await aio.run(where, 21)
    assert doubled == 42
    assert thread_id != threading.get_ident()
    assert selector


async def test_run_raises_the_coroutine_exception() -> None:
    async def fail() -> None:
        await asyncio.sleep(0)
        raise KeyError("boom")

    async with open_asyncio_loop() as aio:
        with pytest.raises(KeyError, match="boom"):
            await aio.run(fail)
        with pytest.raises(TypeError):  # a bad call fails in the task and comes back too
            await aio.run(fail, "unexpected")


async def test_trio_cancellation_cancels_the_asyncio_task_and_waits_for_its_cleanup() -> None:
    started = threading.Event()
    events: list[str] = []

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        finally:
            await asyncio.sleep(0.05)  # cleanup that awaits, like closing a websocket
            events.append("cleaned up")

    async with open_asyncio_loop() as aio:
        with trio.move_on_after(0.2) as scope:
            await aio.run(slow)
        # run() returned only after the asyncio side had finished its cleanup
        assert scope.cancelled_caught
        assert started.is_set()
        assert events == ["cancelled", "cleaned up"]


async def test_asyncio_side_cancellation_is_reported_as_asyncio_cancelled_error() -> None:
    async def cancelled_by_asyncio() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_soon(task.cancel)
        await asyncio.sleep(30)

    async with open_asyncio_loop() as aio:
        with pytest.raises(AsyncioCancelledError):
            await aio.run(cancelled_by_asyncio)


async def test_shutdown_cancels_leftover_tasks_and_ends_the_thread() -> None:
    cleaned = threading.Event()

    async def leftover() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.set()

    async def spawn_leftover() -> None:
        asyncio.get_running_loop().create_task(leftover())  # fire and forget: Runner.close() must reap it

    async with open_asyncio_loop() as aio:
        await aio.run(spawn_leftover)
        thread_names = {t.name for t in threading.enumerate()}
    assert "avatard-asyncio" in thread_names
    assert cleaned.is_set()  # Runner.close() has run by the time the block is left
    with trio.fail_after(1):  # the thread itself ends just after signalling
        while any(t.name == "avatard-asyncio" for t in threading.enumerate()):
            await trio.sleep(0.001)
    with pytest.raises(trio.ClosedResourceError):
        await aio.run(asyncio.sleep, 0)


async def numbers(n: int, log: list[int] | None = None) -> AsyncIterator[int]:
    for i in range(n):
        if log is not None:
            log.append(i)  # pulled by the bridge
        yield i


async def test_stream_delivers_everything_in_order_then_ends() -> None:
    async with open_asyncio_loop() as aio:
        async with aio.open_stream(numbers, 100, max_buffer=4) as items:
            assert [i async for i in items] == list(range(100))


async def test_stream_backpressure_bounds_what_is_in_flight() -> None:
    max_buffer = 4
    pulled: list[int] = []
    in_flight: list[int] = []
    async with open_asyncio_loop() as aio:
        with trio.fail_after(10):  # a deadlock fails here instead of hanging
            async with aio.open_stream(numbers, 300, pulled, max_buffer=max_buffer) as items:
                received = 0
                async for _ in items:
                    received += 1
                    in_flight.append(len(pulled) - received)
                    await trio.sleep(0.001 if received % 10 else 0.02)  # a slow consumer with hiccups
    assert received == 300
    assert max(in_flight) <= max_buffer  # pulled by the bridge but not yet received by trio
    assert max(in_flight) == max_buffer  # ... and the producer did run ahead that far


async def test_full_stream_does_not_block_other_calls_into_the_loop() -> None:
    # The deadlock of the notes: a full channel plus a trio task waiting on the asyncio loop.
    pulled: list[int] = []
    async with open_asyncio_loop() as aio:
        async with aio.open_stream(numbers, 1000, pulled, max_buffer=2) as items:
            with trio.fail_after(5):
                while len(pulled) < 2:
                    await trio.sleep(0.01)
                assert await aio.run(functools.partial(asyncio.sleep, 0.01, result="loop alive")) == "loop alive"
                assert await items.receive() == 0
            assert len(pulled) <= 3


async def test_stream_error_is_raised_after_the_items_before_it() -> None:
    async def fails_after_two() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise ValueError("producer broke")

    async with open_asyncio_loop() as aio:
        async with aio.open_stream(fails_after_two) as items:
            assert await items.receive() == 1
            assert await items.receive() == 2
            with pytest.raises(ValueError, match="producer broke"):
                await items.receive()
            with pytest.raises(trio.EndOfChannel):  # raised once; then the stream has simply ended
                await items.receive()


async def test_leaving_a_stream_cancels_the_producer_and_waits_for_its_cleanup() -> None:
    events: list[str] = []

    async def endless() -> AsyncIterator[int]:
        try:
            for i in range(10**9):
                yield i
                await asyncio.sleep(0.001)
        finally:
            await asyncio.sleep(0.05)
            events.append("closed")

    async with open_asyncio_loop() as aio:
        async with aio.open_stream(endless) as items:
            async for i in items:
                if i == 3:
                    break
        assert events == ["closed"]  # aclose()-d before open_stream() returned

        with trio.move_on_after(0.1):  # the same, through trio cancellation
            async with aio.open_stream(endless) as items:
                async for _ in items:
                    pass
        assert events == ["closed", "closed"]


async def test_errors_in_the_block_are_not_wrapped() -> None:
    async with open_asyncio_loop() as aio:
        with pytest.raises(LookupError):
            async with aio.open_stream(numbers, 10):
                raise LookupError


async def settled(aio: Any) -> None:
    """Wait until the trio side has heard the end of every call_soon() call."""
    with trio.fail_after(10):
        while aio.pending_calls:
            await trio.sleep(0.001)


async def test_call_soon_returns_at_once_and_keeps_the_order() -> None:
    seen: list[tuple[str, int, int]] = []
    done = trio.Event()

    def sync(i: int) -> None:
        seen.append(("sync", i, threading.get_ident()))

    async def coro(i: int) -> None:
        seen.append(("async", i, threading.get_ident()))  # its first step: tasks start in creation order
        await asyncio.sleep(0)

    async with open_asyncio_loop(max_pending_calls=101) as aio:
        for i in range(50):
            aio.call_soon(sync, i)
        for i in range(50):
            aio.call_soon(coro, i)
        aio.call_soon(sync, 50, on_done=lambda result: done.set())
        assert aio.pending_calls > 0  # nothing waited for the asyncio side
        with trio.fail_after(10):
            await done.wait()
        await settled(aio)
    assert [i for kind, i, _ in seen if kind == "sync"] == list(range(51))
    assert [i for kind, i, _ in seen if kind == "async"] == list(range(50))
    assert {thread for _, _, thread in seen} != {threading.get_ident()}
    assert aio.calls_refused == 0


async def test_call_soon_errors_are_logged_or_handed_to_on_done(caplog: pytest.LogCaptureFixture) -> None:
    def sync_fails() -> None:
        raise KeyError("sync boom")

    async def async_fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("async boom")

    outcomes: list[Any] = []
    async with open_asyncio_loop() as aio:
        aio.call_soon(sync_fails)
        aio.call_soon(async_fails)
        aio.call_soon(async_fails, on_done=outcomes.append)
        aio.call_soon(functools.partial(asyncio.sleep, 0, result=7), on_done=outcomes.append)
        await settled(aio)
    failures = [r for r in caplog.records if r.name == "avatard.aio_bridge" and r.levelname == "WARNING"]
    assert len(failures) == 2, "each error without on_done is logged once"
    assert {type(r.exc_info[1]) for r in failures} == {KeyError, ValueError}, "with its traceback"
    assert "sync boom" in failures[0].getMessage() or "sync boom" in failures[1].getMessage()
    assert len(outcomes) == 2
    with pytest.raises(ValueError, match="async boom"):
        outcomes[0].unwrap()
    assert outcomes[1].unwrap() == 7


async def test_call_soon_is_bounded_and_refuses_beyond_the_bound() -> None:
    gate: list[asyncio.Future[None]] = []

    async def hold() -> None:
        if not gate:
            gate.append(asyncio.get_running_loop().create_future())
        await gate[0]

    async def release() -> None:
        gate.pop().set_result(None)

    async with open_asyncio_loop(max_pending_calls=8) as aio:
        accepted = 0
        for _ in range(10_000):  # a flood, faster than the loop can run anything
            try:
                aio.call_soon(hold)
                accepted += 1
            except trio.WouldBlock:
                pass
        assert accepted == 8 and aio.pending_calls == 8
        assert aio.calls_refused == 10_000 - 8, "every refusal is counted"
        await aio.run(asyncio.sleep, 0)  # run() is not held up by a full call_soon()
        assert aio.pending_calls == 8, "tasks still running count as pending"
        await aio.run(release)
        await settled(aio)
        aio.call_soon(hold)  # room again (it waits on a new gate, until the loop shuts down)
        await aio.run(asyncio.sleep, 0)
        assert aio.pending_calls == 1
    with pytest.raises(ValueError, match="max_pending_calls"):
        async with open_asyncio_loop(max_pending_calls=0):
            pass


async def test_call_soon_after_close_is_refused_and_pending_calls_end_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    outcomes: list[Any] = []
    cleaned = threading.Event()

    async def endless() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.set()

    async with open_asyncio_loop() as aio:
        aio.call_soon(endless, on_done=outcomes.append)
        aio.call_soon(endless)  # no on_done: a shutdown's cancellation is not an error to log
        await aio.run(asyncio.sleep, 0)
    assert cleaned.is_set()
    with trio.fail_after(5):
        while aio.pending_calls:  # the last report crosses just after the thread signalled its end
            await trio.sleep(0.001)
    [result] = outcomes
    with pytest.raises(AsyncioCancelledError):
        result.unwrap()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    with pytest.raises(trio.ClosedResourceError):
        aio.call_soon(endless)
    assert aio.pending_calls == 0 and aio.calls_refused == 0


async def test_the_asyncio_loop_itself_is_not_handed_out() -> None:
    async with open_asyncio_loop() as aio:
        public = {name for name in dir(aio) if not name.startswith("_")}
    assert public == {"run", "open_stream", "call_soon", "pending_calls", "calls_refused"}


async def test_bridge_latency_per_message() -> None:
    """Time from the asyncio side yielding an item to trio receiving it, at a real-time pace (5 ms)."""

    async def stamped(n: int) -> AsyncIterator[float]:
        for _ in range(n):
            await asyncio.sleep(0.005)
            yield time.perf_counter()

    async with open_asyncio_loop() as aio:
        async with aio.open_stream(stamped, 400) as stamps:
            latencies = [(time.perf_counter() - t) * 1000 async for t in stamps]
    p50 = statistics.median(latencies)
    p95 = statistics.quantiles(latencies, n=20)[-1]
    print(f"bridge latency ms: p50={p50:.3f} p95={p95:.3f} max={max(latencies):.3f}")
    assert p50 < 5 and p95 < 20  # loose: shared CI machines


# --- the real google-genai Live client through the bridge -----------------------------------------------------------


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    # websockets >= 15 honours *_PROXY for wss; the test server is local.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"])))
    with GeminiLiveTestServer(ms_per_char=20) as live_server:
        yield live_server


def make_client(server: GeminiLiveTestServer, api_key: str = "test-key") -> genai.Client:
    # async_client_args["ssl"] is the only way to give the websocket a CA in code; SSL_CERT_FILE is set machine-wide
    # here, and would only count if set before the Client is built.
    return genai.Client(
        api_key=api_key,
        http_options=types.HttpOptions(
            base_url=server.base_url, async_client_args={"ssl": server.client_ssl_context()}
        ),
    )


GESTURE_TOOL = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(
            name="trigger_gesture",
            description="Play a gesture on the avatar.",
            parameters=types.Schema(type="OBJECT", properties={"gesture": types.Schema(type="STRING")}),
        )
    ]
)


def live_config(**overrides: Any) -> types.LiveConnectConfig:
    settings: dict[str, Any] = dict(
        response_modalities=["AUDIO"],
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        session_resumption=types.SessionResumptionConfig(),
    )
    settings.update(overrides)
    return types.LiveConnectConfig(**settings)


async def live_messages(
    client: genai.Client, model: str, config: types.LiveConnectConfig | None
) -> AsyncIterator[Any]:
    """One asyncio generator owns the whole connection: yields the session, then every server message."""
    async with client.aio.live.connect(model=model, config=config) as session:
        try:
            yield session
            while True:  # receive() stops at every turnComplete
                async for message in session.receive():
                    yield message
        finally:
            await session.close()  # 1000 first; cancelling alone would make websockets close with 1011


@asynccontextmanager
async def open_live(
    aio: Any, client: genai.Client, config: types.LiveConnectConfig | None = None, *, model: str = MODEL
) -> AsyncIterator[tuple[Any, trio.abc.ReceiveChannel[Any]]]:
    async with aio.open_stream(live_messages, client, model, config or live_config()) as messages:
        session = await messages.receive()
        yield session, messages


async def say(aio: Any, session: Any, text: str) -> None:
    await aio.run(
        functools.partial(
            session.send_client_content,
            turns=types.Content(role="user", parts=[types.Part(text=text)]),
            turn_complete=True,
        )
    )


async def receive_turn(messages: trio.abc.ReceiveChannel[Any], on_tool_call: Any = None) -> list[Any]:
    """Messages up to and including turnComplete."""
    turn = []
    with trio.fail_after(10):
        async for message in messages:
            turn.append(message)
            if message.tool_call is not None and on_tool_call is not None:
                await on_tool_call(message.tool_call)
            if message.server_content is not None and message.server_content.turn_complete:
                return turn
    raise AssertionError("stream ended before turnComplete")


def content(turn: list[Any], field: str) -> list[Any]:
    return [
        getattr(m.server_content, field)
        for m in turn
        if m.server_content is not None and getattr(m.server_content, field) is not None
    ]


def pcm16k(*segments: tuple[float, int]) -> bytes:
    """(amplitude 0..1, milliseconds) segments of a 200 Hz tone at 16 kHz, s16le."""
    samples = array.array("h")
    for amplitude, ms in segments:
        samples.extend(int(32767 * amplitude * math.sin(2 * math.pi * 200 * n / 16000)) for n in range(16 * ms))
    return samples.tobytes()


async def send_audio(aio: Any, session: Any, pcm: bytes, chunk_ms: int = 100) -> None:
    size = 16 * chunk_ms * 2
    for i in range(0, len(pcm), size):
        blob = types.Blob(data=pcm[i : i + size], mime_type="audio/pcm;rate=16000")
        await aio.run(functools.partial(session.send_realtime_input, audio=blob))


async def test_text_turn_gets_audio_transcript_and_turn_complete(server: GeminiLiveTestServer) -> None:
    client = make_client(server)
    async with open_asyncio_loop() as aio:
        async with open_live(aio, client) as (session, messages):
            assert session.setup_complete is not None
            await say(aio, session, "hello there")
            turn = await receive_turn(messages)

    reply = "You said: hello there"
    audio = b"".join(m.data for m in turn if m.data)
    assert len(audio) == math.ceil(len(reply) * 20 / CHUNK_MS) * OUTPUT_RATE * CHUNK_MS // 1000 * 2
    assert max(abs(s) for s in array.array("h", audio)) > 1000  # not silence
    assert "".join(t.text for t in content(turn, "output_transcription")) == reply
    assert content(turn, "generation_complete") == [True]
    assert turn[-1].server_content.turn_complete
    assert server.setups[0]["model"] == f"models/{MODEL}"
    assert server.sessions[0].api_version in ("v1", "v1beta")  # the default differs between google-genai releases


async def test_sdk_end_to_end_latency(server: GeminiLiveTestServer) -> None:
    """Server send -> trio receive, per message, through TLS, websockets, the SDK's parsing and the bridge."""
    client = make_client(server)
    async with open_asyncio_loop() as aio:
        async with open_live(aio, client) as (session, messages):
            await say(aio, session, "x" * 100)  # 2 s reply: 50 audio chunks at real-time pace
            arrived = []
            with trio.fail_after(10):
                async for message in messages:
                    arrived.append(time.perf_counter())
                    if message.server_content is not None and message.server_content.turn_complete:
                        break
    sent_at = server.sessions[0].sent_at[1 : 1 + len(arrived)]  # [0] is setupComplete, consumed by connect()
    latencies = [(a - s) * 1000 for a, s in zip(arrived, sent_at)]
    p50 = statistics.median(latencies)
    p95 = statistics.quantiles(latencies, n=20)[-1]
    print(f"SDK end-to-end latency ms over {len(latencies)} msgs: p50={p50:.3f} p95={p95:.3f} max={max(latencies):.3f}")
    assert p50 < 10


async def test_cancelling_mid_reply_closes_the_session_with_1000(server: GeminiLiveTestServer) -> None:
    client = make_client(server)
    async with open_asyncio_loop() as aio:
        with trio.move_on_after(5) as scope:
            async with open_live(aio, client) as (session, messages):
                await say(aio, session, "tell me a long story " * 5)
                audio_seen = 0
                async for message in messages:
                    audio_seen += bool(message.data)
                    if audio_seen == 3:
                        scope.cancel()  # trio cancellation, mid-reply
                        await trio.sleep_forever()
        assert scope.cancelled_caught
        (record,) = await server.async_wait_for(lambda: [s for s in server.sessions if not s.open])
    assert (record.closed_by, record.close_code) == ("client", 1000)
    (conversation,) = server.conversations.values()
    assert [entry.get("status") for entry in conversation] == [None, "abandoned"]


async def test_dropped_connection_surfaces_as_api_error_1006(server: GeminiLiveTestServer) -> None:
    client = make_client(server)
    async with open_asyncio_loop() as aio:
        async with open_live(aio, client) as (session, messages):
            await say(aio, session, "hello")
            await messages.receive()
            server.drop_connections()
            with pytest.raises(errors.APIError) as caught, trio.fail_after(5):
                async for _ in messages:
                    pass
    assert caught.value.code == 1006


async def test_go_away_arrives_as_a_message_then_the_server_closes(server: GeminiLiveTestServer) -> None:
    client = make_client(server)
    async with open_asyncio_loop() as aio:
        async with open_live(aio, client) as (session, messages):
            assert server.send_go_away("0.3s") == 1
            with trio.fail_after(5):
                message = await messages.receive()
                assert message.go_away is not None
                assert message.go_away.time_left == "0.3s"
                with pytest.raises(errors.APIError) as caught:  # we did not reconnect in time
                    await messages.receive()
    assert caught.value.code == 1008
    assert "GoAway" in caught.value.details


async def test_bad_key_gives_api_error_1008(server: GeminiLiveTestServer) -> None:
    client = make_client(server, api_key="wrong-key")
    async with open_asyncio_loop() as aio:
        with pytest.raises(errors.APIError) as caught:
            async with open_live(aio, client):
                pass
    assert caught.value.code == 1008
    assert "API key not valid" in caught.value.details
    assert server.sessions[0].api_key == "wrong-key"


async def test_unknown_model_gives_api_error_1008(server: GeminiLiveTestServer) -> None:
    client = make_client(server)
    async with open_asyncio_loop() as aio:
        with pytest.raises(errors.APIError) as caught:
            async with open_live(aio, client, model="not-a-model"):
                pass
    assert caught.value.code == 1008
    assert "models/not-a-model is not found" in caught.value.details


async def test_function_call_is_answered_through_the_bridge(server: GeminiLiveTestServer) -> None:
    client = make_client(server)
    async with open_asyncio_loop() as aio:
        async with open_live(aio, client, live_config(tools=[GESTURE_TOOL])) as (session, messages):

            async def answer(tool_call: types.LiveServerToolCall) -> None:
                responses = [
                    types.FunctionResponse(id=call.id, name=call.name, response={"result": "ok"})
                    for call in tool_call.function_calls or []
                ]
                await aio.run(functools.partial(session.send_tool_response, function_responses=responses))

            await say(aio, session, "please wave at me")
            turn = await receive_turn(messages, on_tool_call=answer)

    (call,) = turn[0].tool_call.function_calls
    assert (call.name, call.args) == ("trigger_gesture", {"gesture": "mini_wave_hello"})
    assert [r["id"] for r in server.tool_responses] == [call.id]
    assert any(m.data for m in turn[1:])  # audio only after the tool response


async def test_spoken_turn_then_barge_in(server: GeminiLiveTestServer) -> None:
    client = make_client(server)
    async with open_asyncio_loop() as aio:
        async with open_live(aio, client) as (session, messages):
            await send_audio(aio, session, pcm16k((0.2, 600), (0.0, 600)))
            first = await receive_turn(messages)
            assert [t.text for t in content(first, "input_transcription")] == ["<heard 600 ms of audio>"]
            assert content(first, "generation_complete") == [True]

            await say(aio, session, "tell me a long story " * 5)
            audio_chunks = 0
            with trio.fail_after(5):
                while audio_chunks < 2:
                    audio_chunks += bool((await messages.receive()).data)
            await send_audio(aio, session, pcm16k((0.2, 300)))  # the user talks over the answer
            cut = await receive_turn(messages)
            assert content(cut, "interrupted") == [True]
            assert content(cut, "generation_complete") == []

            await send_audio(aio, session, pcm16k((0.0, 600)))  # ... and pauses
            third = await receive_turn(messages)
            assert [t.text for t in content(third, "input_transcription")] == ["<heard 300 ms of audio>"]

    (conversation,) = server.conversations.values()
    assert [(e["role"], e.get("status")) for e in conversation] == [
        ("user", None), ("model", "complete"),
        ("user", None), ("model", "interrupted"),
        ("user", None), ("model", "complete"),
    ]  # fmt: skip


async def test_manual_activity_detection(server: GeminiLiveTestServer) -> None:
    client = make_client(server)
    manual = types.RealtimeInputConfig(automatic_activity_detection=types.AutomaticActivityDetection(disabled=True))
    async with open_asyncio_loop() as aio:
        async with open_live(aio, client, live_config(realtime_input_config=manual)) as (session, messages):
            await send_audio(aio, session, pcm16k((0.2, 300), (0.0, 600)))  # outside an activity: ignored
            await aio.run(functools.partial(session.send_realtime_input, activity_start=types.ActivityStart()))
            await send_audio(aio, session, pcm16k((0.0, 200), (0.2, 200)))  # the client decides what is speech
            await aio.run(functools.partial(session.send_realtime_input, activity_end=types.ActivityEnd()))
            turn = await receive_turn(messages)
    assert [t.text for t in content(turn, "input_transcription")] == ["<heard 400 ms of audio>"]
    # the SDK sends this inner key in snake_case, unlike its neighbours
    assert server.setups[0]["realtimeInputConfig"] == {"automatic_activity_detection": {"disabled": True}}
    assert len(server.conversations["conv_1"]) == 2


async def test_audio_stream_end_and_a_new_text_turn_interrupting(server: GeminiLiveTestServer) -> None:
    client = make_client(server)
    async with open_asyncio_loop() as aio:
        async with open_live(aio, client) as (session, messages):
            await send_audio(aio, session, pcm16k((0.2, 300)))  # no pause after it ...
            await aio.run(functools.partial(session.send_realtime_input, audio_stream_end=True))  # ... mic closed
            first = await receive_turn(messages)
            assert [t.text for t in content(first, "input_transcription")] == ["<heard 300 ms of audio>"]

            await aio.run(functools.partial(session.send_realtime_input, text="a long question " * 5))
            with trio.fail_after(5):
                while not (await messages.receive()).data:
                    pass
            await say(aio, session, "never mind")  # client content interrupts the answer in progress
            cut = await receive_turn(messages)
            assert content(cut, "interrupted") == [True]
            second = await receive_turn(messages)
            assert "".join(t.text for t in content(second, "output_transcription")) == "You said: never mind"

    (conversation,) = server.conversations.values()
    assert [e.get("status") for e in conversation] == [None, "complete", None, "interrupted", None, "complete"]
    kinds = [next(iter(m)) for m in server.received]
    assert kinds[0] == "setup" and kinds.count("client_content") == 1 and "realtime_input" in kinds


async def test_session_resumption_continues_the_conversation(server: GeminiLiveTestServer) -> None:
    client = make_client(server)
    async with open_asyncio_loop() as aio:
        async with open_live(aio, client) as (session, messages):
            await say(aio, session, "first")
            await receive_turn(messages)
            update = (await messages.receive()).session_resumption_update
            assert update is not None and update.resumable
        resume = live_config(session_resumption=types.SessionResumptionConfig(handle=update.new_handle))
        async with open_live(aio, client, resume) as (session, messages):
            await say(aio, session, "second")
            await receive_turn(messages)
        stale = live_config(session_resumption=types.SessionResumptionConfig(handle="handle-unknown"))
        with pytest.raises(errors.APIError) as caught:
            async with open_live(aio, client, stale):
                pass

    assert caught.value.code == 1008
    assert server.setups[1]["sessionResumption"] == {"handle": update.new_handle}
    assert [s.resumed for s in server.sessions] == [False, True, False]
    (conversation,) = server.conversations.values()  # the refused third session started none
    assert [(e["role"], e["text"], e["session"], e.get("status")) for e in conversation] == [
        ("user", "first", "conn_1", None),
        ("model", "You said: first", "conn_1", "complete"),
        ("user", "second", "conn_2", None),
        ("model", "You said: second", "conn_2", "complete"),
    ]


async def test_close_and_reject_hooks(server: GeminiLiveTestServer) -> None:
    client = make_client(server)
    server.reject_next_setups(1, code=1011, reason="Internal error occurred.")
    async with open_asyncio_loop() as aio:
        with pytest.raises(errors.APIError) as refused:
            async with open_live(aio, client):
                pass
        async with open_live(aio, client) as (_, messages):
            assert server.close_connections(1011, "Internal error occurred.") == 1
            with pytest.raises(errors.APIError) as closed, trio.fail_after(5):
                await messages.receive()
    assert (refused.value.code, closed.value.code) == (1011, 1011)
    await server.async_wait_for(lambda: server.live_connections == 0)
    assert [(s.closed_by, s.close_code) for s in server.sessions] == [("server", 1011), ("server", 1011)]


async def test_any_number_of_leading_slashes_and_api_versions(server: GeminiLiveTestServer) -> None:
    client = genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(
            base_url=server.base_url + "/",  # the SDK keeps the slash: "//ws/..."
            api_version="v1beta",
            async_client_args={"ssl": server.client_ssl_context()},
        ),
    )
    async with open_asyncio_loop() as aio:
        async with open_live(aio, client) as (session, _):
            assert session.setup_complete is not None
    assert server.sessions[0].path.startswith("//ws/google.ai.generativelanguage.v1beta.")


async def test_drop_after_fault_hook(server: GeminiLiveTestServer) -> None:
    client = make_client(server)
    server.drop_after(3)  # setupComplete + 2 messages of the reply
    async with open_asyncio_loop() as aio:
        async with open_live(aio, client) as (session, messages):
            await say(aio, session, "hello")
            with pytest.raises(errors.APIError) as caught, trio.fail_after(5):
                async for _ in messages:
                    pass
    assert caught.value.code == 1006
    assert len(server.sessions[0].sent) == 3
