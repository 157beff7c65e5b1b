"""The Gemini brain end to end: the real daemon, the real google-genai client, the Live test server.

The conversation tests run against every model generation the test server knows (3.8, 3.1, 2.5 native audio), and
against 3.8 through Vertex AI, where the real google-auth signs a JWT with a throwaway service-account key and
trades it for a bearer token at the test server's own TLS token endpoint.
"""

import json
import re
import time
import urllib.request

import attrs
import numpy as np
import pytest
import trio
from gemini_live_server import GEN_2_5, GEN_3_1, GEN_3_8, SERVED_MODELS, GeminiLiveTestServer
from wsclient import Client, open_client, samples

from avatard.brains import tts

MODELS = {"3.8": "gemini-3.8-live", "3.1": "gemini-3.1-flash-live-preview",
          "2.5": "gemini-2.5-flash-native-audio-preview-12-2025"}
GEMINI_ENV = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
VERTEX_PROJECT, VERTEX_LOCATION = "test-project", "us-central1"


def write_service_account(server: GeminiLiveTestServer, directory) -> tuple[str, str]:
    """A throwaway service-account JSON with a fresh RSA key whose token_uri is the server's token endpoint; the
    server trusts its public key. Returns (path, the private key PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    email = f"avatard-test@{VERTEX_PROJECT}.iam.gserviceaccount.com"
    server.trust_service_account(email, key.public_key())
    path = directory / "service-account.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": VERTEX_PROJECT, "private_key_id": "0123456789abcdef",
        "private_key": pem, "client_email": email, "client_id": "1234567890", "token_uri": server.token_uri,
    }))
    return str(path), pem


@attrs.define
class Backend:
    """One way of reaching the test server: a generation's model id, by API key or through Vertex AI."""

    server: GeminiLiveTestServer
    generation: str
    vertex: bool = False
    credentials: str | None = None  # the service-account file (Vertex)
    private_key: str | None = None

    @property
    def model(self) -> str:
        return MODELS[self.generation]

    def args(self, *extra, model: str | None = None) -> tuple[str, ...]:
        auth = (("--vertex", "--gcp-project", VERTEX_PROJECT, "--gcp-location", VERTEX_LOCATION) if self.vertex
                else ("--gemini-api-key", "test-key"))
        return (*auth, "--gemini-model", model or self.model, "--gemini-base-url", self.server.base_url,
                "--gemini-ca-file", self.server.ca_path, "--server", "--host", "127.0.0.1", "--port", "0", *extra)

    @property
    def env(self) -> dict[str, str]:
        if not self.vertex:
            return GEMINI_ENV
        # google-auth refreshes through requests, which trusts REQUESTS_CA_BUNDLE (the token endpoint's CA).
        return {**GEMINI_ENV, "GOOGLE_APPLICATION_CREDENTIALS": self.credentials, "REQUESTS_CA_BUNDLE": self.server.ca_path}


@pytest.fixture(params=["3.8", "3.1", "2.5", "3.8-vertex"])
def backend(request, tmp_path):
    generation, _, mode = request.param.partition("-")
    with GeminiLiveTestServer() as server:
        backend = Backend(server, generation, vertex=mode == "vertex")
        if backend.vertex:
            backend.credentials, backend.private_key = write_service_account(server, tmp_path)
        yield backend


@pytest.fixture
def live(backend):
    return backend.server


@pytest.fixture
def gemini_daemon(backend, daemon_factory):
    daemon = daemon_factory(*backend.args(), env=backend.env)
    wait_brain(daemon, "connected")
    return daemon


def wait_brain(daemon, state, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.status()["brain_state"] == state:
            return
        time.sleep(0.05)
    raise TimeoutError(f"brain never became {state}: {daemon.status()}")


def ask_and_wait_answer(daemon, text, timeout=20):
    watcher = daemon.control()
    watcher.request("subscribe", events=["transcription"])
    assert daemon.ctl("ask", text).returncode == 0
    watcher.events_until(lambda e: e["role"] == "assistant" and e["is_final"] and text in e["text"], timeout)


def metrics(daemon) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(avatard_\w+?)(?:_total)? ([\d.e+]+)$", text, re.M)}


# -- conversations, against every generation ---------------------------------------------------------------------------


def test_text_turn_speaks_with_transcripts_and_latency(gemini_daemon, backend, live):
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
    # The reply's first 40 ms chunk at 24 kHz leaves the resampler as less than a frame at 16 kHz, so the
    # renderer re-phases once the next chunk has made a whole frame: the two stages add up to the whole.
    first = latency[0]
    assert first["audio_to_queued_ms"] >= 0 and first["queued_to_frame_ms"] >= 0
    assert first["audio_to_queued_ms"] + first["queued_to_frame_ms"] == pytest.approx(first["audio_to_frame_ms"], abs=0.11)
    assert json.loads(gemini_daemon.ctl("status", "--json").stdout)["last_latency"]["total_ms"] > 0
    setup = json.dumps(live.setups[0])
    assert "inputAudioTranscription" in setup and "Puck" in setup
    assert live.sessions[0].vertex == backend.vertex
    # The Live socket offers no permessage-deflate (avatard/brains/gemini/client.py: zlib on the reply's path).
    assert "sec-websocket-extensions" not in live.sessions[0].headers
    model = live.setups[0]["model"]
    assert model == (f"projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}/publishers/google/models/{backend.model}"
                     if backend.vertex else f"models/{backend.model}")


def test_five_typed_turns_in_a_row_each_answered(gemini_daemon, backend, live):
    """3.1 refuses client_content after the first answer (close 1007): typed turns must go as realtime text."""
    watcher = gemini_daemon.control()
    watcher.request("subscribe", events=["transcription", "frame"])
    for n in range(1, 6):
        text = f"typed turn number {n}"
        assert gemini_daemon.ctl("ask", text).returncode == 0
        events = watcher.events_until(lambda e: e["event"] == "transcription" and e["role"] == "assistant"
                                      and e["is_final"] and text in e["text"], 20)
        heard = [e for e in events if e["event"] == "frame" and e["speaking"] and e["rms"] > 300]
        assert len(heard) > 10, f"turn {n} was heard"
    (conversation,) = live.conversations.values()
    assert [e["text"] for e in conversation if e["role"] == "user"] == [f"typed turn number {n}" for n in range(1, 6)]
    assert all(e["status"] == "complete" for e in conversation if e["role"] == "model")
    assert live.connections == 1, "no session was refused or dropped"
    kinds = [next(k for k in m if k != "setup") for m in live.received[1:]]
    typed = [m for m in live.received if "client_content" in m or "clientContent" in m]
    realtime_text = [m for m in live.received if (m.get("realtime_input") or m.get("realtimeInput") or {}).get("text")]
    if backend.generation == "3.1":
        assert not typed and len(realtime_text) == 5, kinds
    else:
        assert len(typed) == 5 and not realtime_text, kinds


def test_token_usage_is_counted_in_status_and_metrics(gemini_daemon, live):
    ask_and_wait_answer(gemini_daemon, "how many tokens is this")
    ask_and_wait_answer(gemini_daemon, "and this one")
    usage = live.wait_for(lambda: live.usage["response"] and live.usage, 5)
    status = gemini_daemon.status()
    assert (status["prompt_tokens"], status["response_tokens"]) == (usage["prompt"], usage["response"])
    assert usage["prompt"] > 0 and usage["response"] > 0
    numbers = metrics(gemini_daemon)
    assert numbers["avatard_brain_prompt_tokens"] == usage["prompt"]
    assert numbers["avatard_brain_response_tokens"] == usage["response"]
    assert "tokens: " in gemini_daemon.ctl("status").stdout


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
        client.json.clear()
        await client.send_json({"type": "text_input", "data": {"text": "Next question"}})
        final = await client.json_of("transcription", role="assistant", is_final=True, text="You said: Next question", timeout=15)
        assert final
        # The next turn made the server interrupt the answer it was still streaming; that answer was cut here
        # already, so its `interrupted` is not a second interrupt (no status for it, not counted).
        assert not [m for m in client.json if m.get("data", {}).get("status") == "interrupted"]
    assert gemini_daemon.status()["interrupts"] == 1


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


def test_tool_call_gestures_with_the_generations_behaviour(gemini_daemon, backend, live):
    """3.8: declared NON_BLOCKING and answered SILENT (no follow-up speech); elsewhere blocking, answered at once."""
    watcher = gemini_daemon.control()
    watcher.request("subscribe", events=["gesture", "transcription"])
    ask_and_wait_answer(gemini_daemon, "could you wave at me")
    gesture = watcher.events_until(lambda e: e["event"] == "gesture", 10)[-1]
    assert gesture["gesture"] == "mini_wave_hello"
    (response,) = live.wait_for(lambda: live.tool_responses, 5)
    assert response["name"] == "trigger_gesture" and response["response"]["ok"] is True
    (declaration,) = live.setups[0]["tools"][0]["functionDeclarations"]
    assert "heart_gesture" in json.dumps(declaration)
    if backend.generation == "3.8":
        assert declaration["behavior"] == "NON_BLOCKING" and response["scheduling"] == "SILENT"
    else:
        assert "behavior" not in declaration and "scheduling" not in response
    ask_and_wait_answer(gemini_daemon, "thank you")
    (conversation,) = live.conversations.values()
    assert [e["text"] for e in conversation if e["role"] == "user"] == ["could you wave at me", "thank you"], \
        "the tool response started no answer of its own"


def test_keyword_gestures_whole_words_with_cooldown(backend, live, daemon_factory):
    live.reply = lambda text: text  # the model repeats the user: the avatar says exactly these words
    daemon = daemon_factory(*backend.args(), env=backend.env)
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
    assert not [m for m in live.received if set(m) - {"setup", "realtime_input", "realtimeInput"}]
    assert not [m for m in live.received if (m.get("realtime_input") or m.get("realtimeInput") or {}).get("text")]


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


def test_retired_model_fails_at_once_naming_the_current_ids(backend, live, daemon_factory):
    retired = "gemini-2.5-flash-native-audio-preview-09-2025"  # the default before gemini-3.8-live
    daemon = daemon_factory(*backend.args(model=retired), env=backend.env)
    wait_brain(daemon, "failed")
    failure = daemon.status()["brain_failure"]
    assert f"{retired!r} is not served" in failure and "current models: gemini-3.8-live" in failure
    time.sleep(2)
    assert live.connections == 1, "no retry storm"
    assert daemon.status()["brain_state"] == "failed" and daemon.ctl("say", "still here").returncode == 0
    assert retired in daemon.log() and "gemini-3.8-live" in daemon.log()
    assert "failure:" in daemon.ctl("status").stdout


# -- one backend is enough -------------------------------------------------------------------------------------------


@pytest.fixture
def api_server():
    with GeminiLiveTestServer() as server:
        yield server


def test_a_key_alone_talks_to_gemini_3_8_live(api_server, daemon_factory):
    daemon = daemon_factory("--gemini-api-key", "test-key", "--gemini-base-url", api_server.base_url,
                            "--gemini-ca-file", api_server.ca_path, env=GEMINI_ENV)
    wait_brain(daemon, "connected")
    assert api_server.setups[0]["model"] == "models/gemini-3.8-live"
    status = daemon.status()
    assert (status["brain"], status["gemini_model"], status["gemini_rules"]) == ("gemini", "gemini-3.8-live", "3.8 Live")
    assert "gemini-3.8-live via the Gemini API: 3.8 Live rules" in daemon.log()


def test_unknown_model_id_gets_the_newest_rules(daemon_factory):
    with GeminiLiveTestServer(models={**SERVED_MODELS, "gemini-4.0-live": GEN_3_8}) as live:
        backend = Backend(live, "3.8")
        daemon = daemon_factory(*backend.args(model="gemini-4.0-live"), env=backend.env)
        wait_brain(daemon, "connected")
        assert "newest generation" in daemon.log() and daemon.status()["gemini_rules"] == "3.8 Live"
        ask_and_wait_answer(daemon, "hello new model")
        ask_and_wait_answer(daemon, "second turn")


@pytest.mark.parametrize("generation, served_as", [("2.5", GEN_3_8), ("2.5", GEN_3_1), ("3.1", GEN_2_5)])
def test_refused_setup_field_fails_at_once_naming_it(generation, served_as, daemon_factory):
    """A server that serves an id under another generation's rules refuses the thinking knob avatard sends for it
    (3.8: none at all, 3.1: no thinking_budget, 2.5: no thinking_level): stop, and say which field."""
    model = MODELS[generation]
    with GeminiLiveTestServer(models={model: served_as}) as live:
        daemon = daemon_factory(*Backend(live, generation).args(), env=GEMINI_ENV)
        wait_brain(daemon, "failed")
        failure = daemon.status()["brain_failure"]
        assert "thinkingConfig" in failure and model in failure and "1007" in failure
        time.sleep(2)
        assert live.connections == 1, "no retry storm"


def test_bad_key_fails_clearly_without_retrying(api_server, daemon_factory):
    args = list(Backend(api_server, "3.8").args())
    args[1] = "wrong-key"
    daemon = daemon_factory(*args, env=GEMINI_ENV)
    wait_brain(daemon, "failed")
    assert "API key not valid" in daemon.status()["brain_failure"]
    time.sleep(2)
    assert api_server.connections == 1, "no retry storm"
    assert daemon.status()["brain_state"] == "failed"
    assert "wrong-key" not in daemon.log()
    refused = daemon.control()
    refused.request("subscribe", events=["error"])
    daemon.ctl("ask", "hello?")
    assert refused.events_until(lambda e: e["event"] == "error", 5)[-1]["code"] == "brain_failed"


def test_vertex_secrets_never_appear(api_server, daemon_factory, tmp_path):
    """Debug logging, status, metrics: neither the service-account key nor a bearer token, though both were used."""
    backend = Backend(api_server, "3.8", vertex=True)
    backend.credentials, backend.private_key = write_service_account(api_server, tmp_path)
    # Vertex chosen by the SDK's own environment variables this time, not by flags.
    vertex_flags = ("--vertex", "--gcp-project", VERTEX_PROJECT, "--gcp-location", VERTEX_LOCATION)
    args = [arg for arg in backend.args("--log-level", "debug") if arg not in vertex_flags]
    env = {**backend.env, "GOOGLE_GENAI_USE_VERTEXAI": "true", "GOOGLE_CLOUD_PROJECT": VERTEX_PROJECT,
           "GOOGLE_CLOUD_LOCATION": VERTEX_LOCATION}
    daemon = daemon_factory(*args, env=env)
    wait_brain(daemon, "connected")
    assert f"Vertex AI ({VERTEX_PROJECT}, {VERTEX_LOCATION})" in daemon.log()
    ask_and_wait_answer(daemon, "is this private")
    tokens = api_server.bearer_tokens
    assert tokens and api_server.sessions[0].api_key in tokens, "the socket carried a token the endpoint issued"
    outputs = [daemon.ctl("status", "--json").stdout, daemon.ctl("status").stdout, json.dumps(metrics(daemon))]
    daemon.stop()
    outputs.append(daemon.log())
    key_body = "".join(backend.private_key.splitlines()[1:-1])
    for text in outputs:
        flat = text.replace("\\n", "").replace("\n", "")
        assert not any(token in text for token in tokens)
        assert key_body[:40] not in flat and key_body[-40:] not in flat and "PRIVATE KEY" not in text


def test_vertex_untrusted_service_account_fails_without_retrying(api_server, daemon_factory, tmp_path):
    backend = Backend(api_server, "3.8", vertex=True)
    backend.credentials, _ = write_service_account(api_server, tmp_path)
    api_server.trust_service_account(f"avatard-test@{VERTEX_PROJECT}.iam.gserviceaccount.com", None)  # revoked
    daemon = daemon_factory(*backend.args(), env=backend.env)
    wait_brain(daemon, "failed")
    assert "credentials refused" in daemon.status()["brain_failure"]
    time.sleep(1)
    assert api_server.connections == 0 and daemon.ctl("status").returncode == 0


def test_vertex_without_credentials_fails_clearly(api_server, daemon_factory, tmp_path):
    backend = Backend(api_server, "3.8", vertex=True, credentials=str(tmp_path / "missing.json"))
    daemon = daemon_factory(*backend.args(), env=backend.env)
    wait_brain(daemon, "failed")
    assert "no Google Cloud credentials" in daemon.status()["brain_failure"]
    assert api_server.connections == 0
