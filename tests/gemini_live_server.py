"""A protocol-faithful Gemini Live API server for tests.

Not a mock of the SDK: a real TLS websocket server (websockets' asyncio server, in a thread with its own loop) that
the real google-genai client connects to, speaking the wire protocol described in
``/work/shared/spec/gemini_live_wire.md``::

    with GeminiLiveTestServer() as server:
        ctx = server.client_ssl_context()
        client = genai.Client(api_key="test-key", http_options=types.HttpOptions(
            base_url=server.base_url, async_client_args={"ssl": ctx}))

What it imitates, and where that comes from:

* Path: one or more leading slashes + ``ws/google.ai.generativelanguage.{v1,v1beta,v1alpha}.GenerativeService.
  BidiGenerateContent`` (or ``...Constrained`` with ``Authorization: Token <key>``), or Vertex AI's
  ``ws/google.cloud.aiplatform.{v1,v1beta1}.LlmBidiService/BidiGenerateContent`` with ``Authorization: Bearer
  <token>``, where the token must be one the server's own TLS token endpoint (:attr:`token_uri`) issued for a JWT
  signed by a service account the test trusts (:meth:`trust_service_account`); anything else is HTTP 404.
* The first frame must be ``setup``; the API key (or bearer token) and the model are checked after it, as the
  real service does, closing with 1008 "API key not valid..." or 1008 "models/X is not found..." (Vertex:
  "Publisher Model `projects/...` not found."). Only the ids of :data:`SERVED_MODELS` are served; retired ids
  (:data:`RETIRED_MODELS`) and unknown ones are "not found".
* Each served id has its generation's rules (:class:`ServerGeneration`, from ``gemini_live_2026.md``): setup
  fields the generation refuses close with 1007 naming the field; 3.1 refuses ``client_content`` user turns
  after its first answer (1007); 3.x send audio and its transcript in one message, a usage-only message before
  each answer and the turn's end, usage and resumption handle in one message; 3.8 runs function calls
  NON_BLOCKING unless declared ``BLOCKING``, and a response without ``scheduling: SILENT`` makes the model answer
  again (a follow-up turn in :attr:`conversations`).
* Client frames use snake_case top-level keys and camelCase inner keys (the SDK mixes them); both are accepted.
  Bytes are URL-safe base64 (pydantic); both alphabets are decoded. Server frames are binary JSON, like the real
  service, with standard base64 audio.
* Transcriptions are sent only if the setup asked for them (``inputAudioTranscription`` /
  ``outputAudioTranscription``), session resumption updates only if it has ``sessionResumption``; a product that
  forgets these would get nothing from the real service either.
* A new ``client_content`` turn or ``realtime_input.text`` interrupts the answer in progress (the Live API reference:
  client content "will interrupt any current model generation"), so does detected speech (barge-in), unless
  ``realtimeInputConfig.activityHandling`` is ``NO_INTERRUPTION``. An interrupted answer ends with
  ``serverContent.interrupted`` then ``turnComplete`` (public reports of the real server).
* After ``send_go_away`` the server closes, once ``time_left`` has passed, with 1008 "Connection aborted because the
  client failed to close the connection after receiving a GoAway signal..." (public reports of the real server).
* Not verified against the real service (choices made here): a setup with an unknown resumption handle closes with
  1008 "Session handle not found."; a non-setup first frame or invalid JSON closes with 1007.

Everything is recorded under one lock (``setups``, ``received``, ``sessions``, ``tool_responses``,
``conversations``, ...); properties return snapshots. Control methods (``send_go_away``, ``drop_connections``,
``close_connections``, ``drop_after``, ``reject_next_setups``) are thread-safe and return once done; they block the
caller for a few milliseconds, so they are fine to call from trio tests, but must not be called from inside the
server's own callbacks (``reply``).
"""

from __future__ import annotations

import array
import asyncio
import base64
import binascii
import copy
import dataclasses
import itertools
import json
import logging
import math
import os
import re
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import certifi
import trio
import trustme
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

logger = logging.getLogger("avatard.tests.gemini_live_server")

PATH_RE = re.compile(
    r"^/+ws/google\.ai\.generativelanguage\.(?P<version>v1|v1beta|v1alpha)"
    r"\.GenerativeService\.(?P<method>BidiGenerateContent|BidiGenerateContentConstrained)$"
    # Vertex AI (google-genai live.py: f'{base_url}/ws/google.cloud.aiplatform.{version}.LlmBidiService/...').
    r"|^/+ws/google\.cloud\.aiplatform\.(?P<vertex_version>v1|v1beta1)\.LlmBidiService/BidiGenerateContent$"
)
# The setup's model on Vertex: projects/{project}/locations/{location}/publishers/google/models/{model}.
VERTEX_MODEL_RE = re.compile(r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/publishers/google/models/(?P<model>[^/]+)")
TOKEN_PATH = "/token"  # the local OAuth 2.0 token endpoint (a service account's token_uri)
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
TOKEN_LIFETIME = 3600  # seconds, as Google's token endpoint grants

OUTPUT_RATE = 24_000  # model audio: s16le mono at 24 kHz, as the real service sends
OUTPUT_MIME = f"audio/pcm;rate={OUTPUT_RATE}"
INPUT_RATE = 16_000  # default when the client's mime type names no rate
CHUNK_MS = 40  # model audio chunk length
DEFAULT_MS_PER_CHAR = 60  # spoken length of the reply text; ~ a talking speed of 16 characters/s

VAD_FRAME_MS = 10  # energy is judged per 10 ms frame
VAD_SPEECH_MS = 200  # this much voiced audio starts an utterance (and barges in on an answer)
VAD_SILENCE_MS = 500  # this much silence after speech ends the utterance
DEFAULT_VAD_THRESHOLD = 500  # RMS of s16 samples; silence is 0, a -20 dBFS tone is ~3300

CLOSE_REASON_MAX_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code
BAD_KEY_REASON = "API key not valid. Please pass a valid API key."
VERTEX_BAD_TOKEN_REASON = "Request had invalid authentication credentials. Expected OAuth 2 access token."
# 3.1 Flash Live: client_content is only for seeding history (history_config.initial_history_in_client_content).
CLIENT_CONTENT_REFUSED_REASON = "Invalid argument: client_content is only for initial history; send realtime_input.text"
GO_AWAY_CLOSE_CODE = 1008
GO_AWAY_CLOSE_REASON = (
    "Connection aborted because the client failed to close the connection after receiving a GoAway signal "
    "once the session duration expired"
)


@dataclasses.dataclass(frozen=True)
class ServerGeneration:
    """How the real service treats one generation of models (gemini_live_2026.md, "How the generations differ").

    Written from the spec, independently of avatard's own table, so a wrong row in either shows up as a failure.
    """

    name: str
    # client_content with a user turn is refused with 1007 once the model has answered (3.1: typed turns must go
    # through realtime_input.text; client_content only seeds history).
    client_content_after_answer: bool
    # Setup fields refused with 1007: (where in the setup, field name on the wire, predicate on its value).
    refused: tuple[tuple[str, str, Callable[[Any], bool]], ...]
    multipart: bool  # audio and its transcript in one message; usage-only messages; turnComplete with usage
    non_blocking_tools: bool  # calls run NON_BLOCKING unless declared BLOCKING; responses may carry scheduling


GEN_2_5 = ServerGeneration(
    name="2.5", client_content_after_answer=True,
    refused=(("generation_config", "thinking_config", lambda value: _field(value, "thinking_level") is not None),),
    multipart=False, non_blocking_tools=False,
)
GEN_3_1 = ServerGeneration(
    name="3.1", client_content_after_answer=False,
    refused=(
        ("generation_config", "enable_affective_dialog", lambda value: True),
        ("", "proactivity", lambda value: True),
        ("generation_config", "thinking_config", lambda value: _field(value, "thinking_budget") is not None),
    ),
    multipart=True, non_blocking_tools=False,
)
GEN_3_8 = ServerGeneration(
    name="3.8", client_content_after_answer=True,
    refused=(
        ("generation_config", "thinking_config", lambda value: True),
        ("generation_config", "enable_affective_dialog", lambda value: True),
        ("", "proactivity", lambda value: _field(value, "proactive_audio") is False),
    ),
    multipart=True, non_blocking_tools=True,
)
# Model ids the server serves (models page, deprecations page), and the generation each belongs to.
SERVED_MODELS: dict[str, ServerGeneration] = {
    "gemini-3.8-live": GEN_3_8,
    "gemini-3.8-live-extended-thinking": GEN_3_8,
    "gemini-3.1-flash-live-preview": GEN_3_1,
    "gemini-2.5-flash-native-audio-preview-12-2025": GEN_2_5,
    "gemini-live-2.5-flash-native-audio": GEN_2_5,
}
# Ids Google has shut down or superseded; any other id is unknown. Both get "not found".
RETIRED_MODELS = frozenset({
    "gemini-2.5-flash-native-audio-preview-09-2025", "gemini-2.0-flash-live-001", "gemini-live-2.5-flash-preview",
    "gemini-2.0-flash-exp",
})


def _truncate_reason(reason: str) -> str:
    data = reason.encode()[:CLOSE_REASON_MAX_BYTES]
    return data.decode(errors="ignore")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    """``obj[name]`` under its snake_case or camelCase spelling (the SDK sends both)."""
    if not isinstance(obj, dict):
        return default
    if name in obj:
        return obj[name]
    return obj.get(_camel(name), default)


def _b64decode(data: str) -> bytes:
    """Decode URL-safe (what pydantic sends) or standard base64, with or without padding."""
    data = data.replace("-", "+").replace("_", "/")
    return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)


def _parse_time_left(time_left: str) -> float:
    """Seconds of a protobuf Duration string such as ``"2s"`` or ``"0.5s"``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)s", time_left)
    if match is None:
        raise ValueError(f"time_left must look like '2s' or '0.5s', got {time_left!r}")
    return float(match.group(1))


def _syllable_chunks() -> list[bytes]:
    """One 200 ms "syllable" (a 140 Hz voice-like tone under a swelling envelope), cut into 40 ms chunks.

    140 Hz * 0.2 s is a whole number of cycles, so the chunks tile without clicks; the envelope never drops below
    20 %, so every chunk is audibly non-silent.
    """
    period = OUTPUT_RATE * 200 // 1000
    samples = array.array("h")
    for n in range(period):
        t = n / OUTPUT_RATE
        envelope = 0.2 + 0.8 * math.sin(math.pi * n / period) ** 2
        wave = 0.7 * math.sin(2 * math.pi * 140 * t) + 0.3 * math.sin(2 * math.pi * 280 * t)
        samples.append(int(9000 * envelope * wave))
    if sys.byteorder != "little":
        samples.byteswap()
    data = samples.tobytes()
    size = OUTPUT_RATE * CHUNK_MS // 1000 * 2
    return [data[i : i + size] for i in range(0, len(data), size)]


SYLLABLE_CHUNKS = _syllable_chunks()


def _transcript_pieces(text: str) -> list[str]:
    """Cut text into 3..7 character pieces regardless of word boundaries, like the service's partial words."""
    pieces, i = [], 0
    for size in itertools.cycle((4, 7, 3, 5, 6)):
        if i >= len(text):
            return pieces
        pieces.append(text[i : i + size])
        i += size
    return pieces


def _rms(frame: bytes) -> float:
    samples = array.array("h")
    samples.frombytes(frame)
    if sys.byteorder != "little":
        samples.byteswap()
    return math.sqrt(sum(s * s for s in samples) / len(samples))


@dataclasses.dataclass(frozen=True)
class VideoFrame:
    """One picture a client sent as realtime input (the Live API takes JPEG frames at up to 1 per second)."""

    session: str
    mime_type: str
    data: bytes = dataclasses.field(repr=False)
    at: float  # time.monotonic() on arrival


@dataclasses.dataclass
class SessionRecord:
    """What happened on one websocket connection."""

    id: str  # "conn_1", ...
    path: str
    api_version: str | None = None
    vertex: bool = False
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    api_key: str | None = None
    setup: dict[str, Any] | None = None
    model: str | None = None
    resumed: bool = False
    conversation_id: str | None = None
    received: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    sent: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    sent_at: list[float] = dataclasses.field(default_factory=list)  # time.perf_counter() after each send
    open: bool = True
    # The close frame that started the closing handshake: the client's (closed_by="client") or ours ("server");
    # closed_by="dropped" and close_code=1006 when the TCP connection ended without any close frame.
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: str | None = None


class _Vad:
    """Energy VAD over 10 ms frames, timed by the audio itself (not the wall clock), so tests are deterministic."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._partial = b""  # clients send chunks of any length: frames straddle them
        self.reset()

    def reset(self) -> None:
        self.voiced_ms = 0
        self.silence_ms = 0
        self.started = False

    def feed(self, pcm: bytes, rate: int) -> list[tuple[str, int]]:
        """Return events: ("start", voiced_ms) once speech is established, ("end", voiced_ms) after the pause."""
        events = []
        data, size = self._partial + pcm, rate * VAD_FRAME_MS // 1000 * 2
        frames, self._partial = len(data) // size, data[len(data) // size * size :]
        for i in range(frames):
            if _rms(data[i * size : (i + 1) * size]) >= self.threshold:
                self.voiced_ms += VAD_FRAME_MS
                self.silence_ms = 0
                if not self.started and self.voiced_ms >= VAD_SPEECH_MS:
                    self.started = True
                    events.append(("start", self.voiced_ms))
            elif self.voiced_ms:
                self.silence_ms += VAD_FRAME_MS
                if self.silence_ms >= VAD_SILENCE_MS:
                    if self.started:
                        events.append(("end", self.voiced_ms))
                    self.reset()  # a blip shorter than VAD_SPEECH_MS is discarded
        return events

    def flush(self) -> int:
        """audioStreamEnd: return the voiced ms of the pending utterance (0 if none) and reset."""
        voiced = self.voiced_ms
        self._partial = b""
        self.reset()
        return voiced


class _Conn:
    """Server-loop-only state of one live connection."""

    def __init__(self, ws: ServerConnection, record: SessionRecord) -> None:
        self.ws = ws
        self.record = record
        self.functions: dict[str, str] = {}  # declared function -> its behavior ("" when not declared)
        self.generation: ServerGeneration = GEN_3_8
        self.vertex = False
        self.answered = False  # the model has started a turn on this connection
        self.non_blocking_calls: dict[str, str] = {}  # NON_BLOCKING call id -> function name, until answered
        self.modalities: list[str] = ["AUDIO"]
        self.input_transcription = False
        self.output_transcription = False
        self.resumption = False
        self.manual_activity = False
        self.barge_in = True
        self.vad: _Vad | None = None
        self.manual_active = False
        self.manual_samples = 0  # audio received during a manual activity
        self.pending_text: list[str] = []
        self.turns: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.answering = False
        self.interrupt = asyncio.Event()
        self.tool_waits: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class GeminiLiveTestServer:
    """A TLS Gemini Live API server on 127.0.0.1 for the real google-genai client. See the module docstring."""

    def __init__(
        self,
        *,
        valid_keys: set[str] | frozenset[str] = frozenset({"test-key"}),
        models: dict[str, ServerGeneration] | None = None,
        reply: Callable[[str], str] | None = None,
        ms_per_char: float = DEFAULT_MS_PER_CHAR,
        realtime: bool = True,
        gesture_trigger: str | Callable[[str], bool] = r"wave",
        gesture_args: dict[str, Any] | None = None,
        vad_threshold: float = DEFAULT_VAD_THRESHOLD,
        tool_timeout: float = 30.0,
        max_size: int | None = 1 << 20,
    ) -> None:
        """
        models: model id (without "models/") -> the generation whose rules the server applies to it. Default:
            SERVED_MODELS; anything else (RETIRED_MODELS included) is refused with 1008 "not found".
        reply: the answer text for a user turn's text. Default: "You said: <text>".
        ms_per_char: spoken length of the reply, so audio duration = len(reply) * ms_per_char.
        realtime: pace the reply in real time (40 ms per audio chunk); False sends it as fast as possible.
        gesture_trigger: regex (searched case-insensitively) or predicate on the turn text that makes the server
            call ``trigger_gesture`` first, if the setup declared it.
        tool_timeout: how long an answer waits for the tool response before going on without it.
        """
        self.valid_keys = set(valid_keys)
        self.models = dict(SERVED_MODELS if models is None else models)
        self.reply = reply or (lambda text: f"You said: {text}")
        self.ms_per_char = ms_per_char
        self.realtime = realtime
        if isinstance(gesture_trigger, str):
            pattern = re.compile(gesture_trigger, re.IGNORECASE)
            self._gesture_trigger: Callable[[str], bool] = lambda text: pattern.search(text) is not None
        else:
            self._gesture_trigger = gesture_trigger
        self.gesture_args = gesture_args or {"gesture": "mini_wave_hello"}
        self.vad_threshold = vad_threshold
        self.tool_timeout = tool_timeout
        self.max_size = max_size

        self.port: int | None = None
        self.ca_path: str | None = None
        self._cond = threading.Condition(threading.RLock())  # guards every record below
        self._sessions: list[SessionRecord] = []
        self._setups: list[dict[str, Any]] = []
        self._received: list[dict[str, Any]] = []
        self._tool_responses: list[dict[str, Any]] = []
        self._video: list[VideoFrame] = []
        self._conversations: dict[str, list[dict[str, Any]]] = {}
        self._handles: dict[str, str] = {}  # resumption handle -> conversation id
        self._conn_ids = itertools.count(1)
        self._conv_ids = itertools.count(1)
        self._drop_countdown: int | None = None
        self._reject_setups: list[tuple[int, str]] = []
        self._usage: dict[str, int] = {"prompt": 0, "response": 0}  # tokens reported in usageMetadata
        # Vertex: the service accounts whose JWTs the token endpoint accepts (client_email -> public key) and the
        # bearer tokens it issued.
        self._service_accounts: dict[str, Any] = {}
        self._bearer_tokens: set[str] = set()
        self.token_port: int | None = None

        self._live: dict[str, _Conn] = {}  # server loop only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._ca: trustme.CA | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> GeminiLiveTestServer:
        self._tmpdir = tempfile.TemporaryDirectory(prefix="gemini-live-test-")
        self._ca = trustme.CA()
        self.ca_path = os.path.join(self._tmpdir.name, "ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_path)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(server_ctx),), name="gemini-live-test-server", daemon=True
        )
        self._thread.start()
        self._ready.wait(10)
        if self._start_error is not None or self.port is None:
            raise RuntimeError("GeminiLiveTestServer failed to start") from self._start_error
        return self

    def stop(self) -> None:
        """Close every connection (1001, as a server going down does) and stop the thread. Safe to call twice."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass  # loop already closed
            self._thread.join(10)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> GeminiLiveTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _main(self, server_ctx: ssl.SSLContext) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with serve(
                self._handle,
                "127.0.0.1",
                0,
                ssl=server_ctx,
                process_request=self._process_request,
                max_size=self.max_size,
            ) as server:
                self.port = next(iter(server.sockets)).getsockname()[1]
                token_server = await asyncio.start_server(self._token_endpoint, "127.0.0.1", 0, ssl=server_ctx)
                self.token_port = token_server.sockets[0].getsockname()[1]
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._start_error = exc
            raise
        finally:
            self._ready.set()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        """The OAuth 2.0 token endpoint for a service account's ``token_uri`` (same TLS CA as the Live server)."""
        return f"https://127.0.0.1:{self.token_port}{TOKEN_PATH}"

    def client_ssl_context(self) -> ssl.SSLContext:
        """certifi's CAs plus this server's CA: pass as ``HttpOptions(async_client_args={"ssl": ctx})``."""
        ctx = ssl.create_default_context(cafile=certifi.where())
        ctx.load_verify_locations(cafile=self.ca_path)
        return ctx

    # --- records (snapshots) ---------------------------------------------------------------------------------------

    @property
    def setups(self) -> list[dict[str, Any]]:
        """Every setup message's ``setup`` object, in arrival order (resumption handle included)."""
        with self._cond:
            return copy.deepcopy(self._setups)

    @property
    def received(self) -> list[dict[str, Any]]:
        """Every client message (setup included), on all connections, in arrival order."""
        with self._cond:
            return copy.deepcopy(self._received)

    @property
    def sessions(self) -> list[SessionRecord]:
        with self._cond:
            return copy.deepcopy(self._sessions)

    @property
    def connections(self) -> int:
        """How many websocket connections were accepted (rejected setups included)."""
        with self._cond:
            return len(self._sessions)

    @property
    def live_connections(self) -> int:
        with self._cond:
            return sum(1 for s in self._sessions if s.open)

    @property
    def video_frames(self) -> list[VideoFrame]:
        """Every ``realtime_input.video`` (and video ``media_chunks``) blob received, in order."""
        with self._cond:
            return list(self._video)

    @property
    def tool_responses(self) -> list[dict[str, Any]]:
        """Every functionResponse received, in order."""
        with self._cond:
            return copy.deepcopy(self._tool_responses)

    @property
    def conversations(self) -> dict[str, list[dict[str, Any]]]:
        """conversation id -> log of {"role": "user"|"model", "text", "session", "status" (model only)}.

        Entries come in pairs, a user turn then the model's answer to it, logged when the answer ends. Model
        status: "complete", "interrupted", or "abandoned" (the connection ended before or during the answer). A
        resumed session continues its conversation, so "each user turn got exactly one complete answer" is
        checkable across reconnections.
        """
        with self._cond:
            return copy.deepcopy(self._conversations)

    @property
    def usage(self) -> dict[str, int]:
        """Tokens reported so far in usageMetadata: {"prompt": n, "response": n}."""
        with self._cond:
            return dict(self._usage)

    @property
    def bearer_tokens(self) -> set[str]:
        """Access tokens the token endpoint issued."""
        with self._cond:
            return set(self._bearer_tokens)

    def trust_service_account(self, client_email: str, public_key: Any) -> None:
        """Accept JWT grants signed by ``public_key`` (a cryptography RSA public key) for ``client_email``."""
        with self._cond:
            self._service_accounts[client_email] = public_key

    @property
    def handles(self) -> list[str]:
        """Resumption handles issued so far, oldest first."""
        with self._cond:
            return list(self._handles)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Block until ``predicate()`` is truthy (re-checked on every record change); return it, or raise
        TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (result := predicate()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"condition not met within {timeout} s")
                self._cond.wait(min(remaining, 0.05))
            return result

    async def async_wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Trio version of :meth:`wait_for` (polls every 5 ms, so the trio loop keeps running)."""
        with trio.move_on_after(timeout):
            while not (result := predicate()):
                await trio.sleep(0.005)
            return result
        raise TimeoutError(f"condition not met within {timeout} s")

    def _changed(self) -> None:
        self._cond.notify_all()

    # --- test controls (any thread) --------------------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        assert self._loop is not None, "server not started"
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def send_go_away(
        self, time_left: str = "2s", *, close_code: int = GO_AWAY_CLOSE_CODE, close_reason: str = GO_AWAY_CLOSE_REASON
    ) -> int:
        """Send ``goAway{timeLeft}`` on every live connection; close those still open when it has passed.

        Returns the number of connections told.
        """
        delay = _parse_time_left(time_left)

        async def expire(conn: _Conn) -> None:
            await self._send(conn, {"goAway": {"timeLeft": time_left}})
            await asyncio.sleep(delay)
            await conn.ws.close(close_code, _truncate_reason(close_reason))

        def schedule() -> int:
            for conn in self._live.values():
                conn.spawn(expire(conn))
            return len(self._live)

        return self._call(schedule)

    def drop_connections(self) -> int:
        """Abort every live connection's TCP connection without a close frame (the client sees 1006)."""

        def drop() -> int:
            for conn in self._live.values():
                conn.ws.transport.abort()
            return len(self._live)

        return self._call(drop)

    def close_connections(self, code: int = 1011, reason: str = "Internal error occurred.") -> int:
        """Close every live connection with a close frame ``code``/``reason``."""

        def close() -> int:
            for conn in self._live.values():
                conn.spawn(conn.ws.close(code, _truncate_reason(reason)))
            return len(self._live)

        return self._call(close)

    def drop_after(self, n_messages: int) -> None:
        """Fault hook: once the server has sent ``n_messages`` more messages (any connection, setupComplete
        included), abort the connection that sent the last one. One-shot."""
        with self._cond:
            self._drop_countdown = n_messages

    def reject_next_setups(self, n: int = 1, code: int = 1011, reason: str = "Internal error occurred.") -> None:
        """Fault hook: close the next ``n`` connections right after their setup message with ``code``/``reason``."""
        with self._cond:
            self._reject_setups.extend([(code, reason)] * n)

    # --- the Vertex token endpoint (server loop) -------------------------------------------------------------------

    async def _token_endpoint(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """OAuth 2.0 JWT-bearer grant (RFC 7523), as google-auth's service-account credentials use it: POST
        ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<RS256 JWT>`` to ``token_uri``. The JWT
        must be signed by a trusted service account's key, name Google's token endpoint as ``aud`` and not be expired."""
        status, body = 400, {"error": "invalid_request"}
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.split(":", 1) for line in header_lines if ":" in line)
            length = int({k.strip().lower(): v.strip() for k, v in headers.items()}.get("content-length", "0"))
            form = urllib.parse.parse_qs((await reader.readexactly(length)).decode())
            method, path, _ = request_line.split(" ", 2)
            if method != "POST" or path != TOKEN_PATH:
                status, body = 404, {"error": "not_found"}
            elif form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
                body = {"error": "unsupported_grant_type"}
            elif (problem := self._check_jwt((form.get("assertion") or [""])[0])) is not None:
                body = {"error": "invalid_grant", "error_description": problem}
            else:
                token = f"ya29.test-{uuid.uuid4().hex}"
                with self._cond:
                    self._bearer_tokens.add(token)
                    self._changed()
                status, body = 200, {"access_token": token, "expires_in": TOKEN_LIFETIME, "token_type": "Bearer"}
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError):
            pass
        payload = json.dumps(body).encode()
        writer.write(f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
        try:
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass

    def _check_jwt(self, assertion: str) -> str | None:
        """None if the assertion is a valid RS256 JWT from a trusted service account for this endpoint."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header, claims = json.loads(_b64decode(header_b64)), json.loads(_b64decode(claims_b64))
            signature = _b64decode(signature_b64)
        except (ValueError, binascii.Error):
            return "malformed assertion"
        with self._cond:
            key = self._service_accounts.get(claims.get("iss"))
        if header.get("alg") != "RS256" or key is None:
            return "unknown service account or algorithm"
        try:
            key.verify(signature, f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "bad signature"
        # google-auth always names Google's endpoint as the audience, whatever the token_uri (service_account.py,
        # _make_authorization_grant_assertion: "The audience must be the auth token endpoint's URI").
        if claims.get("aud") != GOOGLE_TOKEN_AUDIENCE or claims.get("exp", 0) < time.time():
            return "wrong audience or expired"
        return None

    # --- connection handling (server loop) -------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        # Not urlsplit(): it reads the "//ws" of "//ws/google.ai..." as a host name.
        if PATH_RE.match(request.path.partition("?")[0]) is None:
            return connection.respond(404, "Not Found\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        match = PATH_RE.match(ws.request.path.partition("?")[0])
        assert match is not None  # _process_request refused anything else
        headers = {k.lower(): v for k, v in ws.request.headers.raw_items()}
        vertex = match["vertex_version"] is not None
        api_key = headers.get("x-goog-api-key")
        if vertex:
            api_key = headers.get("authorization", "").removeprefix("Bearer ") or None
        elif match["method"] == "BidiGenerateContentConstrained":
            api_key = headers.get("authorization", "").removeprefix("Token ") or None
        with self._cond:
            record = SessionRecord(
                id=f"conn_{next(self._conn_ids)}",
                path=ws.request.path,
                api_version=match["version"] or match["vertex_version"],
                vertex=vertex,
                headers=headers,
                api_key=api_key,
            )
            self._sessions.append(record)
            self._changed()
        conn = _Conn(ws, record)
        try:
            if await self._handshake(conn, record.api_version):
                self._live[record.id] = conn
                await self._serve(conn)
        except ConnectionClosed:
            pass
        except Exception:
            logger.error("%s: server error", record.id, exc_info=True)
            await ws.close(1011, "Internal error occurred.")
        finally:
            self._live.pop(record.id, None)
            for task in list(conn.tasks):
                task.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)
            while not conn.turns.empty():  # turns that never got an answer started
                self._log_turn(conn, conn.turns.get_nowait(), "", "abandoned")
            await ws.wait_closed()
            self._record_close(conn)

    def _record_close(self, conn: _Conn) -> None:
        protocol = conn.ws.protocol
        rcvd, sent = protocol.close_rcvd, protocol.close_sent
        if rcvd is not None and (sent is None or protocol.close_rcvd_then_sent):
            closed_by, code, reason = "client", rcvd.code, rcvd.reason
        elif sent is not None:
            closed_by, code, reason = "server", sent.code, sent.reason
        else:
            closed_by, code, reason = "dropped", 1006, ""
        with self._cond:
            conn.record.open = False
            conn.record.closed_by, conn.record.close_code, conn.record.close_reason = closed_by, code, reason
            self._changed()
        logger.debug("%s closed by %s: %s %s", conn.record.id, closed_by, code, reason)

    async def _handshake(self, conn: _Conn, version: str) -> bool:
        """Read and check the setup message; send setupComplete. False if the connection was refused."""
        ws, record = conn.ws, conn.record
        try:
            first = json.loads(await ws.recv())
        except (json.JSONDecodeError, UnicodeDecodeError):
            await ws.close(1007, "Invalid JSON payload received.")
            return False
        setup = first.get("setup") if isinstance(first, dict) else None
        if not isinstance(setup, dict):
            await ws.close(1007, "The first message must be a setup message.")
            return False
        model = str(setup.get("model", ""))
        resumption = _field(setup, "session_resumption")
        handle = _field(resumption, "handle")
        with self._cond:
            record.setup = setup
            record.model = model
            record.received.append(first)
            self._received.append(first)
            self._setups.append(copy.deepcopy(setup))
            reject = self._reject_setups.pop(0) if self._reject_setups else None
            conversation = self._handles.get(handle) if handle else None
            self._changed()
        conn.vertex = record.vertex
        with self._cond:
            authorized = record.api_key in (self._bearer_tokens if record.vertex else self.valid_keys)
        if not authorized:
            # Vertex: a choice made here (the real service may refuse the upgrade with HTTP 401 instead).
            await ws.close(1008, VERTEX_BAD_TOKEN_REASON if record.vertex else BAD_KEY_REASON)
            return False
        vertex_model = VERTEX_MODEL_RE.fullmatch(model)
        name = vertex_model["model"] if vertex_model else model.removeprefix("models/")
        generation = self.models.get(name)
        if generation is None or (record.vertex and vertex_model is None):
            if record.vertex:
                reason = f"Publisher Model `{model}` not found."
            else:
                reason = (f"models/{name} is not found for API version {version}, or is not supported for "
                          "bidiGenerateContent. Call ListModels to see the list of available models and their "
                          "supported methods.")
            await ws.close(1008, _truncate_reason(reason))
            return False
        conn.generation = generation
        for where, field, refused in generation.refused:
            scope = _field(setup, where) if where else setup
            value = _field(scope, field)
            if value is not None and refused(value):
                at = f"setup.{where}" if where else "setup"
                await ws.close(1007, _truncate_reason(
                    f'Invalid JSON payload received. Unknown name "{_camel(field)}" at \'{at}\': Cannot find field.'))
                return False
        if reject is not None:
            await ws.close(reject[0], _truncate_reason(reject[1]))
            return False
        if handle and conversation is None:
            await ws.close(1008, "Session handle not found.")
            return False

        for tool in _field(setup, "tools") or []:
            for declaration in _field(tool, "function_declarations") or []:
                conn.functions[declaration.get("name")] = str(_field(declaration, "behavior") or "")
        conn.modalities = _field(_field(setup, "generation_config"), "response_modalities") or ["AUDIO"]
        conn.input_transcription = _field(setup, "input_audio_transcription") is not None
        conn.output_transcription = _field(setup, "output_audio_transcription") is not None
        conn.resumption = resumption is not None
        realtime_config = _field(setup, "realtime_input_config") or {}
        conn.manual_activity = bool(_field(_field(realtime_config, "automatic_activity_detection"), "disabled"))
        conn.barge_in = _field(realtime_config, "activity_handling") != "NO_INTERRUPTION"
        conn.vad = None if conn.manual_activity else _Vad(self.vad_threshold)
        with self._cond:
            if conversation is None:
                conversation = f"conv_{next(self._conv_ids)}"
                self._conversations[conversation] = []
            else:
                record.resumed = True
            record.conversation_id = conversation
            self._changed()
        await self._send(conn, {"setupComplete": {}})
        return True

    async def _serve(self, conn: _Conn) -> None:
        conn.spawn(self._answer_loop(conn))
        async for raw in conn.ws:
            try:
                message = json.loads(raw)
                if not isinstance(message, dict):
                    raise ValueError("not an object")
            except ValueError:
                await conn.ws.close(1007, "Invalid JSON payload received.")
                return
            with self._cond:
                conn.record.received.append(message)
                self._received.append(message)
                self._changed()
            await self._dispatch(conn, message)

    async def _dispatch(self, conn: _Conn, message: dict[str, Any]) -> None:
        if (content := _field(message, "client_content")) is not None:
            user_turn = any(_field(turn, "role", "user") == "user" for turn in _field(content, "turns") or [])
            if user_turn and conn.answered and not conn.generation.client_content_after_answer:
                await conn.ws.close(1007, CLIENT_CONTENT_REFUSED_REASON)
                return
            for turn in _field(content, "turns") or []:
                if _field(turn, "role", "user") != "user":
                    continue  # model turns are history the client replays, not something to answer
                for part in _field(turn, "parts") or []:
                    if _field(part, "text"):
                        conn.pending_text.append(part["text"])
            if _field(content, "turn_complete") and conn.pending_text:
                text, conn.pending_text = " ".join(conn.pending_text), []
                self._user_turn(conn, text, interrupt=True)
        elif (realtime := _field(message, "realtime_input")) is not None:
            await self._realtime_input(conn, realtime)
        elif (tool_response := _field(message, "tool_response")) is not None:
            for response in _field(tool_response, "function_responses") or []:
                with self._cond:
                    self._tool_responses.append(response)
                    self._changed()
                waiter = conn.tool_waits.pop(response.get("id"), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(response)
                name = conn.non_blocking_calls.pop(response.get("id"), None)
                scheduling = _field(response, "scheduling") or "WHEN_IDLE"
                if name is not None and scheduling != "SILENT":
                    # The model reacts to the result: a new answer once idle, or at once (live-tools guide).
                    self._user_turn(conn, f"<{name} result>", interrupt=scheduling == "INTERRUPT")
        elif _field(message, "context_update") is not None:
            pass  # recorded; nothing to answer
        elif "setup" in message:
            await conn.ws.close(1007, "Setup must be the first message, and only the first.")
        else:
            await conn.ws.close(1007, "Invalid JSON payload received. Unknown message type.")

    async def _realtime_input(self, conn: _Conn, realtime: dict[str, Any]) -> None:
        blobs = list(_field(realtime, "media_chunks") or [])
        if (audio := _field(realtime, "audio")) is not None:
            blobs.append(audio)
        if (video := _field(realtime, "video")) is not None:
            blobs.append(video)
        for blob in blobs:
            mime = str(_field(blob, "mime_type") or "")
            if mime.startswith("image/"):
                try:
                    data = _b64decode(_field(blob, "data") or "")
                except (binascii.Error, ValueError):
                    await conn.ws.close(1007, "Invalid value at 'realtime_input.video.data': invalid base64.")
                    return
                with self._cond:
                    self._video.append(VideoFrame(conn.record.id, mime, data, time.monotonic()))
                    self._changed()
                continue  # seen, not understood: the test model does not answer pictures
            if not mime.startswith("audio/pcm"):
                continue  # anything else: recorded, not understood
            rate_match = re.search(r"rate=(\d+)", mime)
            rate = int(rate_match.group(1)) if rate_match else INPUT_RATE
            try:
                pcm = _b64decode(_field(blob, "data") or "")
            except (binascii.Error, ValueError):
                await conn.ws.close(1007, "Invalid value at 'realtime_input.audio.data': invalid base64.")
                return
            if conn.vad is not None:
                for event, voiced_ms in conn.vad.feed(pcm, rate):
                    if event == "start":
                        self._barge_in(conn)
                    else:
                        await self._heard(conn, voiced_ms)
            elif conn.manual_active:
                conn.manual_samples += len(pcm) // 2 * INPUT_RATE // rate  # counted at 16 kHz
        if _field(realtime, "audio_stream_end") and conn.vad is not None:
            if voiced_ms := conn.vad.flush():
                await self._heard(conn, voiced_ms)
        if _field(realtime, "activity_start") is not None and conn.manual_activity:
            conn.manual_active, conn.manual_samples = True, 0
            self._barge_in(conn)
        if _field(realtime, "activity_end") is not None and conn.manual_activity and conn.manual_active:
            conn.manual_active = False
            await self._heard(conn, conn.manual_samples * 1000 // INPUT_RATE)
        if text := _field(realtime, "text"):
            self._user_turn(conn, text, interrupt=True)

    async def _heard(self, conn: _Conn, ms: int) -> None:
        text = f"<heard {ms} ms of audio>"
        if conn.input_transcription:
            await self._send(conn, {"serverContent": {"inputTranscription": {"text": text}}})
        self._user_turn(conn, text, interrupt=False)  # speech already barged in when it started

    def _barge_in(self, conn: _Conn) -> None:
        if conn.answering and conn.barge_in:
            conn.interrupt.set()

    def _user_turn(self, conn: _Conn, text: str, *, interrupt: bool) -> None:
        if interrupt:
            self._barge_in(conn)
        conn.turns.put_nowait(text)

    def _log_turn(self, conn: _Conn, text: str, reply: str, status: str) -> None:
        with self._cond:
            self._conversations[conn.record.conversation_id] += [
                {"role": "user", "text": text, "session": conn.record.id},
                {"role": "model", "text": reply, "session": conn.record.id, "status": status},
            ]
            self._changed()

    async def _send(self, conn: _Conn, message: dict[str, Any]) -> None:
        await conn.ws.send(json.dumps(message).encode())  # binary frame, as the real service sends
        with self._cond:
            conn.record.sent.append(message)
            conn.record.sent_at.append(time.perf_counter())
            drop = False
            if self._drop_countdown is not None:
                self._drop_countdown -= 1
                if self._drop_countdown <= 0:
                    self._drop_countdown, drop = None, True
            self._changed()
        if drop:
            conn.ws.transport.abort()

    # --- answering (server loop) -----------------------------------------------------------------------------------

    async def _answer_loop(self, conn: _Conn) -> None:
        while True:
            text = await conn.turns.get()
            conn.interrupt.clear()
            conn.answering = True
            status, reply = "abandoned", ""
            try:
                status, reply = await self._answer(conn, text)
            finally:
                conn.answering = False
                self._log_turn(conn, text, reply, status)

    async def _pause(self, conn: _Conn, seconds: float) -> bool:
        """Sleep (or just yield, if not realtime); True if the answer was interrupted meanwhile."""
        if seconds > 0 and self.realtime:
            try:
                await asyncio.wait_for(conn.interrupt.wait(), seconds)
            except asyncio.TimeoutError:  # an alias of TimeoutError only from Python 3.11
                pass
        else:
            await asyncio.sleep(0)
        return conn.interrupt.is_set()

    async def _interrupted(self, conn: _Conn, reply: str) -> tuple[str, str]:
        await self._send(conn, {"serverContent": {"interrupted": True}})
        await self._send(conn, {"serverContent": {"turnComplete": True}})
        return "interrupted", reply

    def _usage_metadata(self, conn: _Conn, *, prompt: int = 0, response: int = 0) -> dict[str, Any]:
        """A usageMetadata object (Vertex names the response tokens candidatesTokenCount); counted in ``usage``."""
        with self._cond:
            self._usage["prompt"] += prompt
            self._usage["response"] += response
            self._changed()
        return {"promptTokenCount": prompt, "candidatesTokenCount" if conn.vertex else "responseTokenCount": response,
                "totalTokenCount": prompt + response}

    async def _call_tool(self, conn: _Conn, text: str) -> tuple[str, str] | None:
        """Call trigger_gesture before answering; wait for the response if the call blocks. Returns the answer's
        end if an interrupt came first, else None."""
        call_id = f"function-call-{uuid.uuid4().int % 10**18}"
        call = {"id": call_id, "name": "trigger_gesture", "args": self.gesture_args}
        if conn.generation.non_blocking_tools and conn.functions["trigger_gesture"] != "BLOCKING":
            # NON_BLOCKING: the model goes on talking; the response's scheduling decides what happens to it.
            conn.non_blocking_calls[call_id] = "trigger_gesture"
            await self._send(conn, {"toolCall": {"functionCalls": [call]}})
            return None
        waiter = asyncio.get_running_loop().create_future()
        conn.tool_waits[call_id] = waiter
        await self._send(conn, {"toolCall": {"functionCalls": [call]}})
        interrupt = asyncio.ensure_future(conn.interrupt.wait())
        try:
            await asyncio.wait([waiter, interrupt], timeout=self.tool_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupt.cancel()
            conn.tool_waits.pop(call_id, None)
        if conn.interrupt.is_set():
            await self._send(conn, {"toolCallCancellation": {"ids": [call_id]}})
            return await self._interrupted(conn, "")
        if not waiter.done():
            logger.warning("%s: no tool response for %s within %s s", conn.record.id, call_id, self.tool_timeout)
        return None

    def _answer_messages(self, conn: _Conn, reply: str, duration: float) -> list[tuple[float, dict[str, Any]]]:
        """(due time, message) of one answer. 2.5: one part per message. 3.x: each audio chunk travels with the
        transcript pieces due by then, in one message (gemini_live_2026.md, "one server message")."""
        pieces = _transcript_pieces(reply)
        text_due = [(i * duration / len(pieces), piece) for i, piece in enumerate(pieces)]
        if "TEXT" in conn.modalities:
            return [(due, {"serverContent": {"modelTurn": {"parts": [{"text": piece}]}}}) for due, piece in text_due]
        if not conn.output_transcription:
            text_due = []
        events: list[tuple[float, dict[str, Any]]] = []
        chunks = max(1, math.ceil(duration * 1000 / CHUNK_MS))
        for i in range(chunks):
            data = base64.b64encode(SYLLABLE_CHUNKS[i % len(SYLLABLE_CHUNKS)]).decode()
            part = {"inlineData": {"mimeType": OUTPUT_MIME, "data": data}}
            due = i * CHUNK_MS / 1000
            content: dict[str, Any] = {"modelTurn": {"parts": [part]}}
            if conn.generation.multipart:
                until = (i + 1) * CHUNK_MS / 1000 if i < chunks - 1 else math.inf
                joined = "".join(piece for at, piece in text_due if due <= at < until)
                if joined:
                    content["outputTranscription"] = {"text": joined}
            events.append((due, {"serverContent": content}))
        if not conn.generation.multipart:
            events += [(due, {"serverContent": {"outputTranscription": {"text": piece}}}) for due, piece in text_due]
            events.sort(key=lambda event: event[0])  # stable: audio before the transcript piece due at the same time
        return events

    async def _answer(self, conn: _Conn, text: str) -> tuple[str, str]:
        """Answer one user turn; return (status, reply text)."""
        conn.answered = True
        prompt_tokens, reply = len(text) // 4 + 1, self.reply(text)
        if conn.generation.multipart:
            # 3.x: a message with nothing but usage comes before the answer; it does not end the turn.
            await self._send(conn, {"serverContent": {}, "usageMetadata": self._usage_metadata(conn, prompt=prompt_tokens)})
            prompt_tokens = 0
        if "trigger_gesture" in conn.functions and self._gesture_trigger(text):
            if (interrupted := await self._call_tool(conn, text)) is not None:
                return interrupted

        duration = len(reply) * self.ms_per_char / 1000
        start = time.monotonic()
        for due, message in self._answer_messages(conn, reply, duration):
            if await self._pause(conn, start + due - time.monotonic()):
                return await self._interrupted(conn, reply)
            await self._send(conn, message)
        if await self._pause(conn, start + duration - time.monotonic()):
            return await self._interrupted(conn, reply)
        usage = self._usage_metadata(conn, prompt=prompt_tokens, response=len(reply) // 4 + 1)
        update = None
        if conn.resumption:
            handle = f"handle-{uuid.uuid4().hex}"
            with self._cond:
                self._handles[handle] = conn.record.conversation_id
                self._changed()
            update = {"newHandle": handle, "resumable": True}
        if conn.generation.multipart:
            # 3.x: the end of the turn, its usage and the new resumption handle in one message.
            end: dict[str, Any] = {"serverContent": {"generationComplete": True, "turnComplete": True}, "usageMetadata": usage}
            if update is not None:
                end["sessionResumptionUpdate"] = update
            await self._send(conn, end)
        else:
            await self._send(conn, {"usageMetadata": usage})
            await self._send(conn, {"serverContent": {"generationComplete": True}})
            await self._send(conn, {"serverContent": {"turnComplete": True}})
            if update is not None:
                await self._send(conn, {"sessionResumptionUpdate": update})
        return "complete", reply
