"""The Gemini brain end to end: the real daemon, the real google-genai client, the Live test server."""

import json
import time

import numpy as np
import pytest
import trio
from gemini_live_server import GeminiLiveTestServer
from wsclient import Client, open_client, samples

from avatard.brains import tts


@pytest.fixture
def live():
    with GeminiLiveTestServer() as server:
        yield server


def gemini_args(server, *extra):
    return ("--gemini-api-key", "test-key", "--gemini-base-url", server.base_url, "--gemini-ca-file", server.ca_path,
            "--server", "--host", "127.0.0.1", "--port", "0", *extra)


GEMINI_ENV = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


@pytest.fixture
def gemini_daemon(live, daemon_factory):
    daemon = daemon_factory(*gemini_args(live), env=GEMINI_ENV)
    wait_brain(daemon, "connected")
    return daemon


def wait_brain(daemon, state, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.status()["brain_state"] == state:
            return
        time.sleep(0.05)
    raise TimeoutError(f"brain never became {state}: {daemon.status()}")


def test_text_turn_speaks_with_transcripts_and_latency(gemini_daemon, live):
    watcher = gemini_daemon.control()
    assert watcher.request("subscribe", events=["transcription", "frame", "status", "latency"])["ok"]
    assert gemini_daemon.ctl("ask", "Tell me about the weather").returncode == 0
    events = watcher.events_until(lambda e: e["event"] == "transcription" and e["role"] == "assistant" and e["is_final"], 20)
    texts = [(e["role"], e["is_final"], e["text"]) for e in events if e["event"] == "transcription"]
    assert texts[0] == ("user", True, "Tell me about the weather")
    partials = [t for r, f, t in texts if r == "assistant" and not f]
    assert len(partials) >= 3 and partials[-1].startswith("You said")
    assert texts[-1] == ("assistant", True, "You said: Tell me about the weather")
    frames = [e for e in events if e["event"] == "frame" and e["speaking"]]
    assert len(frames) > 25 and max(f["rms"] for f in frames) > 300 and max(f["mouth"] for f in frames) > 0.3
    latency = [e for e in events if e["event"] == "latency"]
    assert latency and latency[0]["total_ms"] < 1000
    assert json.loads(gemini_daemon.ctl("status", "--json").stdout)["last_latency"]["total_ms"] > 0
    setup = live.setups[0]["setup"] if "setup" in live.setups[0] else live.setups[0]
    assert "inputAudioTranscription" in json.dumps(setup) and "Puck" in json.dumps(setup)


async def test_streamed_audio_gets_a_reply(gemini_daemon, live):
    speech = tts.synthesize("What time is it in Tokyo?")
    pcm = np.concatenate([speech, np.zeros(16000, np.int16)]).astype("<i2").tobytes()
    async with open_client(gemini_daemon.port) as ws:
        client = Client(ws)
        await client.json_of("status", status="connected")
        for start in range(0, len(pcm), 1280):
            await ws.send_message(pcm[start:start + 1280])
            await trio.sleep(0.04)
        user = await client.json_of("transcription", role="user", is_final=True, timeout=15)
        assert "heard" in user["data"]["text"]
        final = await client.json_of("transcription", role="assistant", is_final=True, timeout=20)
        assert final["data"]["text"].startswith("You said")
    sent_audio = [m for m in live.received if "realtime_input" in m or "realtimeInput" in m]
    assert len(sent_audio) > 20


async def test_barge_in_from_the_model_cuts_audio_everywhere(gemini_daemon, live):
    async with open_client(gemini_daemon.port) as ws:
        client = Client(ws)
        await client.json_of("status", status="connected")
        await client.send_json({"type": "text_input", "data": {"text": "Please tell me a very long story " * 4}})
        await client.until(lambda m: hasattr(m, "sample_rate") and np.abs(samples(m)).max() > 300, 15)
        speech = tts.synthesize("Stop, stop, wait a moment please.")
        pcm = speech.astype("<i2").tobytes()
        for start in range(0, len(pcm), 1280):
            await ws.send_message(pcm[start:start + 1280])
            await trio.sleep(0.04)
        await client.json_of("status", status="interrupted", timeout=10)
        client.audio.clear()
        with trio.move_on_after(1.0):
            while True:
                await client.receive()
        assert client.audio and all(np.abs(samples(c)).max() == 0 for c in client.audio)
    log = next(iter(live.conversations.values()))
    assert any(entry.get("status") == "interrupted" for entry in log)


async def test_operator_interrupt_discards_the_rest_of_the_answer(gemini_daemon, live):
    async with open_client(gemini_daemon.port) as ws:
        client = Client(ws)
        await client.json_of("status", status="connected")
        await client.send_json({"type": "text_input", "data": {"text": "Say something rather long for a while " * 3}})
        await client.until(lambda m: hasattr(m, "sample_rate") and np.abs(samples(m)).max() > 300, 15)
        assert gemini_daemon.ctl("interrupt").returncode == 0
        await client.json_of("status", status="interrupted")
        client.audio.clear()
        # The server keeps streaming the answer; none of it may play.
        with trio.move_on_after(2.0):
            while True:
                await client.receive()
        assert all(np.abs(samples(c)).max() == 0 for c in client.audio)
        await client.send_json({"type": "text_input", "data": {"text": "Next question"}})
        final = await client.json_of("transcription", role="assistant", is_final=True, text="You said: Next question", timeout=15)
        assert final


def ask_and_wait_answer(daemon, text, timeout=20):
    watcher = daemon.control()
    watcher.request("subscribe", events=["transcription"])
    assert daemon.ctl("ask", text).returncode == 0
    watcher.events_until(lambda e: e["role"] == "assistant" and e["is_final"] and text in e["text"], timeout)


def test_go_away_resumes_with_the_handle(gemini_daemon, live):
    ask_and_wait_answer(gemini_daemon, "first turn")
    handle = live.wait_for(lambda: live.handles, 5)[-1]
    watcher = gemini_daemon.control()
    watcher.request("subscribe", events=["status"])
    live.send_go_away("5s")
    watcher.events_until(lambda e: e.get("status") == "brain_connected" and e.get("resumed"), 10)
    sessions = live.sessions
    assert sessions[-1].resumed and handle in json.dumps(sessions[-1].setup)
    assert sessions[0].closed_by == "client" and sessions[0].close_code == 1000
    ask_and_wait_answer(gemini_daemon, "second turn")
    conversation = live.conversations[sessions[-1].conversation_id]
    answered = [e["text"] for e in conversation if e["role"] == "user"]
    assert answered == ["first turn", "second turn"]


def test_dropped_connection_mid_answer_is_resumed(gemini_daemon, live):
    ask_and_wait_answer(gemini_daemon, "a first turn, so the server has issued a resumption handle")
    live.wait_for(lambda: live.handles, 5)
    watcher = gemini_daemon.control()
    watcher.request("subscribe", events=["status", "transcription"])
    assert gemini_daemon.ctl("ask", "a long answer please, with many many words in it").returncode == 0
    watcher.events_until(lambda e: e["event"] == "transcription" and e["role"] == "assistant", 10)
    live.drop_connections()
    watcher.events_until(lambda e: e.get("status") == "brain_reconnecting", 10)
    watcher.events_until(lambda e: e.get("status") == "brain_connected", 15)
    assert live.sessions[-1].resumed
    ask_and_wait_answer(gemini_daemon, "after the drop")
    assert gemini_daemon.status()["brain_state"] == "connected"


def test_bad_key_fails_clearly_without_retrying(live, daemon_factory):
    args = list(gemini_args(live))
    args[1] = "wrong-key"
    daemon = daemon_factory(*args, env=GEMINI_ENV)
    wait_brain(daemon, "failed")
    assert "API key not valid" in daemon.status()["brain_failure"]
    time.sleep(2)
    assert live.connections == 1, "no retry storm"
    assert daemon.status()["brain_state"] == "failed"
    assert "wrong-key" not in daemon.log()
    refused = daemon.control()
    refused.request("subscribe", events=["error"])
    daemon.ctl("ask", "hello?")
    assert refused.events_until(lambda e: e["event"] == "error", 5)[-1]["code"] == "brain_failed"


def test_tool_call_gestures_and_is_answered(gemini_daemon, live):
    watcher = gemini_daemon.control()
    watcher.request("subscribe", events=["gesture", "transcription"])
    assert gemini_daemon.ctl("ask", "could you wave at me").returncode == 0
    gesture = watcher.events_until(lambda e: e["event"] == "gesture", 10)[-1]
    assert gesture["gesture"] == "mini_wave_hello"
    responses = live.wait_for(lambda: live.tool_responses, 5)
    assert responses[0]["name"] == "trigger_gesture" and responses[0]["response"]["ok"] is True
    declared = json.dumps(live.setups[0])
    assert "trigger_gesture" in declared and "heart_gesture" in declared


def test_keyword_gestures_whole_words_with_cooldown(live, daemon_factory):
    live.reply = lambda text: text  # the model repeats the user: the avatar says exactly these words
    daemon = daemon_factory(*gemini_args(live), env=GEMINI_ENV)
    wait_brain(daemon, "connected")
    watcher = daemon.control()
    watcher.request("subscribe", events=["gesture", "transcription"])
    ask_and_wait_answer(daemon, "this is it")
    ask_and_wait_answer(daemon, "hello there, hello again")
    ask_and_wait_answer(daemon, "hi")
    events = watcher.events_until(lambda e: e["event"] == "transcription" and e["is_final"] and e["text"] == "hi"
                                  and e["role"] == "assistant", 10)
    gestures = [e["gesture"] for e in events if e["event"] == "gesture"]
    assert gestures == ["mini_wave_hello"], "one wave for 'hello' within the cooldown, none for 'this'"


def test_say_is_spoken_verbatim_without_a_model_turn(gemini_daemon, live):
    watcher = gemini_daemon.control()
    watcher.request("subscribe", events=["transcription", "frame"])
    assert gemini_daemon.ctl("say", "The shop closes in ten minutes.").returncode == 0
    events = watcher.events_until(lambda e: e["event"] == "frame" and e["speaking"] and e["rms"] > 300, 10)
    said = [e for e in events if e["event"] == "transcription"]
    assert said[-1]["text"] == "The shop closes in ten minutes." and said[-1]["role"] == "assistant"
    assert not [m for m in live.received if "client_content" in m or "clientContent" in m]


def test_turns_sent_while_reconnecting_are_kept_and_answered(gemini_daemon, live):
    ask_and_wait_answer(gemini_daemon, "before the outage")
    live.reject_next_setups(2, code=1011)  # the next two reconnects fail: the brain backs off
    watcher = gemini_daemon.control()
    watcher.request("subscribe", events=["status", "transcription"])
    live.drop_connections()
    watcher.events_until(lambda e: e.get("status") == "brain_reconnecting", 10)
    assert gemini_daemon.ctl("ask", "during the outage").returncode == 0
    events = watcher.events_until(lambda e: e.get("role") == "assistant" and e["is_final"]
                                  and "during the outage" in e["text"], 30)
    attempts = [e for e in events if e.get("status") == "brain_reconnecting"]
    assert len(attempts) >= 2, "it backed off and retried"
    assert [e["text"] for e in events if e.get("role") == "user"] == ["during the outage"]


def test_go_away_lets_the_answer_in_progress_finish(gemini_daemon, live):
    ask_and_wait_answer(gemini_daemon, "first turn")
    watcher = gemini_daemon.control()
    watcher.request("subscribe", events=["status", "transcription"])
    assert gemini_daemon.ctl("ask", "a longer answer that is still playing when the server says goodbye").returncode == 0
    watcher.events_until(lambda e: e.get("role") == "assistant" and not e["is_final"], 10)
    live.send_go_away("10s")
    events = watcher.events_until(lambda e: e.get("status") == "brain_connected", 15)
    finals = [e for e in events if e.get("role") == "assistant" and e["is_final"]]
    assert finals and not finals[-1].get("interrupted"), "the answer finished on the old connection"
    assert finals[-1]["text"].endswith("server says goodbye")
    assert live.sessions[0].closed_by == "client" and live.sessions[0].close_code == 1000
    ask_and_wait_answer(gemini_daemon, "after the move")
