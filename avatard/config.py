"""The daemon's configuration: one frozen attrs class, validated once at start-up.

Parsing flags, the environment and ``.env`` files is the CLI's job (``avatard.cli``); this module only
says what a valid configuration is. Every check raises :class:`ConfigError` with a message that names
the flag, so start-up fails with one readable line.
"""

from __future__ import annotations

import ipaddress
import os
import re
from urllib.parse import urlsplit

import attrs

from .constants import MAX_CAMERA_FPS, MAX_TEXT_CHARS, RATE, VIDEO_CODECS
from .errors import ConfigError

# Prebuilt voices of the Live API (the 30 HD voices of the native-audio models; the seed's five are among them).
GEMINI_VOICES = (
    "Achernar", "Achird", "Algenib", "Algieba", "Alnilam", "Aoede", "Autonoe", "Callirrhoe", "Charon",
    "Despina", "Enceladus", "Erinome", "Fenrir", "Gacrux", "Iapetus", "Kore", "Laomedeia", "Leda", "Orus",
    "Puck", "Pulcherrima", "Rasalgethi", "Sadachbia", "Sadaltager", "Schedar", "Sulafat", "Umbriel",
    "Vindemiatrix", "Zephyr", "Zubenelgenubi",
)
# Google's current stable Live model (released 2026-09-15, "the default option for most low-latency voice agent
# experiences"); the rules of each model generation live in avatard.brains.gemini.generations.
DEFAULT_GEMINI_MODEL = "gemini-3.8-live"
# Vertex AI's regional endpoint used when --gcp-location is not given (Live models are served there).
DEFAULT_GCP_LOCATION = "us-central1"
# Project ids: 6-30 lowercase letters, digits, hyphens (resourcemanager docs), legacy ones with a "domain:" prefix;
# locations are region names like us-central1, or "global". Both go into URLs, so nothing else is accepted.
GCP_PROJECT_RE = re.compile(r"(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
GCP_LOCATION_RE = re.compile(r"[a-z]+(?:-[a-z0-9]+)*")
DEFAULT_INSTRUCTIONS = "You are a friendly assistant. Keep your answers short and conversational."
RENDERERS = ("auto", "builtin", "bithuman")
BRAINS = ("auto", "gemini", "local")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
BARGE_IN = ("auto", "on", "off")
# --tls: the one mode that needs no files (avatard.tls.self_signed); --tls-cert/--tls-key bring a pair.
TLS_SELF_SIGNED = "self-signed"
TLS_MODES = (TLS_SELF_SIGNED,)
AEC = ("auto", "on", "off")
AEC_TUNINGS = ("double-talk", "webrtc")  # see avatard.local.echo_canceller.TUNINGS
DEFAULT_AEC_TUNING = "double-talk"
# --greet model: the arrival becomes a model turn (Gemini greets in its own words) instead of a fixed sentence.
GREET_MODEL = "model"
# --greet-after: a day. Longer is a typo; 0 greets every arrival.
MAX_GREET_AFTER = 86400.0
# Frame sizes beyond this are not an avatar on an edge box; the limit keeps a typo from allocating gigabytes.
MAX_FRAME_SIDE = 4096
# The ICE server URLs aiortc takes (RFC 7064/7065: stun/stuns/turn/turns, host, optional port, turn's
# ?transport=udp|tcp).
ICE_URL_RE = re.compile(r"(stuns?|turns?):(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(\?transport=(udp|tcp))?")
# 16 kHz audio must split into whole samples per frame: fps must divide RATE.
MAX_FPS = 60
# Janus's streaming plugin takes numeric mountpoint ids (string_ids off, the default); JSON numbers beyond
# 2^53 lose precision in the viewer page's JavaScript.
MAX_MOUNTPOINT = 2 ** 53 - 1
DEFAULT_MOUNTPOINT = 8765  # clear of the ids in Janus's sample configuration (1, 2, 3, 123)


def _path_exists(flag: str):
    def check(instance, attribute, value):
        if value is not None and not os.path.isfile(value):
            raise ConfigError(f"{flag}: file not found: {value}")
    return check


def _one_of(flag: str, choices):
    def check(instance, attribute, value):
        if value not in choices:
            raise ConfigError(f"{flag}: {value!r} is not one of {', '.join(choices)}")
    return check


def _in_range(flag: str, low: int, high: int):
    def check(instance, attribute, value):
        if not low <= value <= high:
            raise ConfigError(f"{flag}: {value} is not in {low}..{high}")
    return check


def _fps_divides_rate(instance, attribute, value):
    if not 1 <= value <= MAX_FPS or RATE % value:
        raise ConfigError(f"--fps: {value} must be between 1 and {MAX_FPS} and divide {RATE} (e.g. 25, 20, 32)")


def _record_path(instance, attribute, value):
    if value is None:
        return
    if not value.lower().endswith(".mp4"):
        raise ConfigError(f"--record: {value} must end in .mp4")
    directory = os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise ConfigError(f"--record: cannot write to directory {directory}")


def _janus_urls(instance, attribute, value):
    for url in value:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--janus: {url!r} is not an http(s) URL of Janus's API (e.g. http://127.0.0.1:8088/janus)")
        try:
            unspecified = ipaddress.ip_address(parts.hostname).is_unspecified
        except ValueError:
            unspecified = False  # a host name
        if unspecified:  # the mountpoint's RTP input binds to this address: 0.0.0.0 would be every interface
            raise ConfigError(f"--janus: {url!r}: name the Janus machine's own address, not {parts.hostname}")
    if len(set(value)) != len(value):
        raise ConfigError("--janus: the same server is given twice")


def _voice(instance, attribute, value):
    if value not in GEMINI_VOICES:
        raise ConfigError(f"--gemini-voice: unknown voice {value!r}; known: {', '.join(GEMINI_VOICES)}")


def _camera(instance, attribute, value):
    if value is not None and not value.strip().isdigit() and not os.path.exists(value):
        raise ConfigError(f"--camera: {value!r} is neither a device index nor an existing device or video file")


def _camera_fps(instance, attribute, value):
    if not 0 < value <= MAX_CAMERA_FPS:
        raise ConfigError(f"--camera-fps: {value:g} must be above 0 and at most {MAX_CAMERA_FPS:g} "
                          f"(Gemini Live takes at most 1 frame per second)")


def _greet(instance, attribute, value):
    if value is not None and not 0 < len(value.strip()) <= MAX_TEXT_CHARS:
        raise ConfigError(f"--greet: the greeting must be 1..{MAX_TEXT_CHARS} characters")


def _matches(flag: str, pattern: re.Pattern, example: str):
    def check(instance, attribute, value):
        if value is not None and not pattern.fullmatch(value):
            raise ConfigError(f"{flag}: {value!r} is not valid (e.g. {example})")
    return check


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name (or "" for every interface): it may reach beyond this machine


def parse_size(text: str) -> tuple[int, int]:
    """``"512x512"`` -> ``(512, 512)``; raises ConfigError naming ``--size``."""
    try:
        w, h = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size: {text!r} is not WIDTHxHEIGHT (e.g. 512x512)") from None
    for side in (w, h):
        if not 16 <= side <= MAX_FRAME_SIDE or side % 2:
            raise ConfigError(f"--size: {text!r}: sides must be even and in 16..{MAX_FRAME_SIDE}")
    return w, h


@attrs.frozen(kw_only=True)
class Config:
    """Everything avatard needs to start. Secrets are excluded from ``repr`` so they never reach a log."""

    # The seed's table.
    model: str | None = attrs.field(default=None, validator=_path_exists("--model"))
    api_secret: str | None = attrs.field(default=None, repr=False)
    gemini_api_key: str | None = attrs.field(default=None, repr=False)
    agent_id: str | None = None
    gemini_model: str = DEFAULT_GEMINI_MODEL
    gemini_voice: str = attrs.field(default="Puck", validator=_voice)
    instructions: str = DEFAULT_INSTRUCTIONS
    audio_file: str | None = attrs.field(default=None, validator=_path_exists("--audio-file"))
    server: bool = False
    host: str = "0.0.0.0"
    port: int = attrs.field(default=8765, validator=_in_range("--port", 0, 65535))
    metrics_port: int | None = attrs.field(default=None, validator=attrs.validators.optional(_in_range("--metrics-port", 0, 65535)))
    local_display: bool = False
    # Local mode's devices (see avatard.devices, avatard.microphone) and the recording.
    input_device: str | None = None
    output_device: str | None = None
    barge_in: str = attrs.field(default="auto", validator=_one_of("--barge-in", BARGE_IN))
    aec: str = attrs.field(default="auto", validator=_one_of("--aec", AEC))
    aec_ns: bool = False
    aec_tuning: str = attrs.field(default=DEFAULT_AEC_TUNING, validator=_one_of("--aec-tuning", AEC_TUNINGS))
    record: str | None = attrs.field(default=None, validator=_record_path)
    # Added by avatard.
    renderer: str = attrs.field(default="auto", validator=_one_of("--renderer", RENDERERS))
    brain: str = attrs.field(default="auto", validator=_one_of("--brain", BRAINS))
    control_socket: str = ""
    width: int = 512
    height: int = 512
    fps: int = attrs.field(default=25, validator=_fps_divides_rate)
    log_level: str = attrs.field(default="info", validator=_one_of("--log-level", LOG_LEVELS))
    log_format: str = attrs.field(default="text", validator=_one_of("--log-format", LOG_FORMATS))
    jpeg_quality: int = attrs.field(default=80, validator=_in_range("--jpeg-quality", 10, 100))
    max_clients: int = attrs.field(default=10, validator=_in_range("--max-clients", 1, 1000))
    max_clients_per_ip: int = attrs.field(default=4, validator=_in_range("--max-clients-per-ip", 1, 1000))
    token: str | None = attrs.field(default=None, repr=False)  # lets a client talk; see avatard.server.access
    token_file: str | None = None  # where the token came from (--token-file or generated), to tell the operator
    viewer_token: str | None = attrs.field(default=None, repr=False)  # lets a client only watch
    no_auth: bool = False  # beyond loopback without a token, on purpose
    share_transcripts: bool = False  # user transcripts to every client that may talk, not only their author
    allow_origin: tuple[str, ...] = ()
    # TLS on the server port: a pair of PEM files, or a self-signed certificate made once (avatard.tls).
    tls: str | None = attrs.field(default=None, validator=attrs.validators.optional(_one_of("--tls", TLS_MODES)))
    tls_cert: str | None = None
    tls_key: str | None = None
    # WebRTC: no ICE server unless given (aiortc's default is Google's public STUN server, which an offline box
    # waits seconds for); TURN credentials for the turn: URLs.
    ice_server: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    turn_username: str | None = None
    turn_password: str | None = attrs.field(default=None, repr=False)
    webrtc_codec: str = attrs.field(default="vp8", validator=_one_of("--webrtc-codec", VIDEO_CODECS))
    gemini_base_url: str | None = None
    gemini_ca_file: str | None = attrs.field(default=None, validator=_path_exists("--gemini-ca-file"))
    # Vertex AI: the project and location; credentials come from Application Default Credentials.
    vertex: bool = False
    gcp_project: str | None = attrs.field(default=None, validator=_matches("--gcp-project", GCP_PROJECT_RE, "my-project-123"))
    gcp_location: str = attrs.field(default=DEFAULT_GCP_LOCATION,
                                    validator=_matches("--gcp-location", GCP_LOCATION_RE, "us-central1"))
    gestures_file: str | None = attrs.field(default=None, validator=_path_exists("--gestures-file"))
    gesture_cooldown: float = attrs.field(default=3.0, validator=_in_range("--gesture-cooldown", 0, 3600))

    # Vision: the local camera, its rate to the model, and the greeting on arrival.
    camera: str | None = attrs.field(default=None, validator=_camera)
    camera_fps: float = attrs.field(default=MAX_CAMERA_FPS, converter=float, validator=_camera_fps)
    greet: str | None = attrs.field(default=None, validator=_greet)
    greet_after: float = attrs.field(default=30.0, converter=float, validator=_in_range("--greet-after", 0, MAX_GREET_AFTER))

    # The broadcast through Janus servers (avatard.broadcast).
    janus: tuple[str, ...] = attrs.field(default=(), validator=_janus_urls)
    janus_admin_key: str | None = attrs.field(default=None, repr=False)
    janus_mountpoint: int = attrs.field(default=DEFAULT_MOUNTPOINT, validator=_in_range("--janus-mountpoint", 1, MAX_MOUNTPOINT))
    janus_video_codec: str = attrs.field(default="vp8", validator=_one_of("--janus-video-codec", VIDEO_CODECS))
    janus_pin: str | None = attrs.field(default=None, repr=False)  # viewers must give it to watch

    def __attrs_post_init__(self) -> None:
        if self.renderer == "bithuman" and not (self.model and self.api_secret):
            raise ConfigError("--renderer: bithuman needs --model and --api-secret (or BITHUMAN_MODEL_PATH and BITHUMAN_API_SECRET)")
        if self.model is not None and not self.model.endswith(".imx"):
            raise ConfigError(f"--model: {self.model} is not a bitHuman .imx model")
        for url in self.ice_server:
            if not ICE_URL_RE.fullmatch(url):
                raise ConfigError(f"--ice-server: {url[:80]!r} is not stun:HOST[:PORT] or turn[s]:HOST[:PORT][?transport=udp|tcp]")
            if url.startswith("turn") and not (self.turn_username and self.turn_password):
                raise ConfigError(f"--ice-server: {url} needs --turn-username and --turn-password "
                                  "(AVATARD_TURN_USERNAME, AVATARD_TURN_PASSWORD)")
        if self.vertex and not self.gcp_project:
            raise ConfigError("--vertex: needs --gcp-project (or GOOGLE_CLOUD_PROJECT)")
        if self.brain == "gemini" and not (self.gemini_api_key or self.vertex):
            raise ConfigError("--brain: gemini needs --gemini-api-key (or GOOGLE_API_KEY / GEMINI_API_KEY), "
                              "or --vertex with --gcp-project")
        if self.gemini_base_url is not None and not self.gemini_base_url.startswith(("https://", "http://")):
            raise ConfigError(f"--gemini-base-url: {self.gemini_base_url!r} is not an http(s) URL")
        if self.aec == "on" and not (self.wants_speaker and self.wants_microphone):
            raise ConfigError("--aec: on needs local mode's speaker and microphone (not --server, not --audio-file)")
        if self.audio_file is not None and not os.access(self.audio_file, os.R_OK):
            raise ConfigError(f"--audio-file: cannot read {self.audio_file}")
        if self.no_auth and self.token is not None:
            raise ConfigError("--no-auth: contradicts --token (or AVATARD_TOKEN / --token-file); give one of them")
        if self.viewer_token is not None and (self.token is None or self.viewer_token == self.token):
            raise ConfigError("--viewer-token: needs a different --token (without one every client may talk)")
        if self.server and self.token is None and not self.no_auth and not self.loopback_only:
            raise ConfigError(f"--host: {self.host} is reachable beyond this machine; set --token, or --no-auth on purpose")
        if self.tls is not None and (self.tls_cert or self.tls_key):
            raise ConfigError("--tls: self-signed contradicts --tls-cert/--tls-key (or AVATARD_TLS_CERT/AVATARD_TLS_KEY); "
                              "give one of them")
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("--tls-cert", "--tls-key") if self.tls_key is None else ("--tls-key", "--tls-cert")
            raise ConfigError(f"{given}: needs {missing} too (AVATARD_TLS_CERT and AVATARD_TLS_KEY)")
        if self.greet == GREET_MODEL and self.brain_kind != "gemini":
            raise ConfigError("--greet: model needs the Gemini brain (the offline brain speaks a --greet TEXT)")

    @property
    def loopback_only(self) -> bool:
        """The server listens on this machine only: open without a token, for local development."""
        return is_loopback(self.host)

    @property
    def tls_on(self) -> bool:
        return self.tls is not None or self.tls_cert is not None

    @property
    def renderer_kind(self) -> str:
        """The renderer actually used: ``auto`` picks bitHuman when a model and a secret are set."""
        if self.renderer != "auto":
            return self.renderer
        return "bithuman" if self.model and self.api_secret else "builtin"

    @property
    def brain_kind(self) -> str:
        """The brain actually used: ``auto`` picks Gemini when a Google key or a Vertex project is set."""
        if self.brain != "auto":
            return self.brain
        return "gemini" if self.gemini_api_key or self.vertex else "local"

    @property
    def sees(self) -> bool:
        """Whether camera frames can arrive at all: a local camera, or browsers (server mode)."""
        return self.camera is not None or self.server

    @property
    def samples_per_frame(self) -> int:
        return RATE // self.fps

    # Local mode (no --server) has a window, a speaker and a microphone (the audio file replaces the
    # microphone); server mode has none of them, but --local-display adds the window.
    @property
    def wants_window(self) -> bool:
        return not self.server or self.local_display

    @property
    def wants_speaker(self) -> bool:
        return not self.server

    @property
    def wants_microphone(self) -> bool:
        return not self.server and self.audio_file is None

    @property
    def aec_wanted(self) -> bool:
        """``auto``: on whenever our own speaker plays the avatar and our microphone listens (the room echoes)."""
        return self.aec == "on" or (self.aec == "auto" and self.wants_speaker and self.wants_microphone)

    def barge_in_enabled(self, aec: bool) -> bool:
        """``auto``: off when our own speaker plays the avatar (open speakers echo into the microphone),
        unless the echo canceller runs (``aec``: decided at start-up, see ``avatard.local.setup``)."""
        return self.barge_in == "on" or (self.barge_in == "auto" and (not self.wants_speaker or aec))
