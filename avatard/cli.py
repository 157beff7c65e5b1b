"""``avatard``: parse flags, the environment and ``.env`` into a Config, then run the daemon.

Precedence, highest first: command-line flag, environment variable, ``--env-file`` / ``./.env``, default.
Any invalid value stops start-up with exit code 2 and one line naming the flag.
"""

from __future__ import annotations

import os
import sys

import click
import dotenv

from .config import (
    AEC,
    AEC_TUNINGS,
    BARGE_IN,
    BRAINS,
    DEFAULT_AEC_TUNING,
    DEFAULT_GCP_LOCATION,
    DEFAULT_GEMINI_MODEL,
    DEFAULT_INSTRUCTIONS,
    DEFAULT_MOUNTPOINT,
    LOG_FORMATS,
    LOG_LEVELS,
    RENDERERS,
    TLS_MODES,
    TLS_SELF_SIGNED,
    Config,
    is_loopback,
    parse_size,
)
from .constants import VIDEO_CODECS
from .errors import AvatardError, ConfigError
from .paths import default_control_socket, default_state_directory
from .token_file import load_or_create, read_token_file

# (flag, environment variables, click options). The seed's table names the first environment
# variables; every other flag gets an AVATARD_* variable so the whole config can live in a .env file.
OPTIONS = [
    ("--model", ["BITHUMAN_MODEL_PATH"], dict(help="Path to the bitHuman avatar model (.imx).")),
    ("--api-secret", ["BITHUMAN_API_SECRET"], dict(help="bitHuman API secret (never logged).")),
    ("--gemini-api-key", ["GOOGLE_API_KEY", "GEMINI_API_KEY"], dict(help="Google AI API key; enables the Gemini brain (never logged).")),
    ("--agent-id", ["BITHUMAN_AGENT_ID"], dict(help="bitHuman agent id, for its gestures (dynamics).")),
    ("--gemini-model", ["AVATARD_GEMINI_MODEL"], dict(default=DEFAULT_GEMINI_MODEL, show_default=True,
                                                      help="Gemini Live model; any id is accepted (unknown ids get the newest generation's rules).")),
    ("--gemini-voice", ["AVATARD_GEMINI_VOICE"], dict(default="Puck", show_default=True, help="Gemini prebuilt voice, e.g. Puck, Charon, Kore, Fenrir, Aoede.")),
    ("--instructions", ["AVATARD_INSTRUCTIONS"], dict(default=DEFAULT_INSTRUCTIONS, help="System instructions for Gemini.")),
    ("--audio-file", ["BITHUMAN_AUDIO_PATH"], dict(help="Audio file to use as the user's voice.")),
    ("--server", ["AVATARD_SERVER"], dict(is_flag=True, help="Serve the avatar over HTTP + WebSocket.")),
    ("--host", ["AVATARD_HOST"], dict(default="0.0.0.0", show_default=True, help="Server host. Beyond loopback the "
                                      "server needs a token: one is generated unless --token, --token-file or --no-auth.")),
    ("--port", ["AVATARD_PORT"], dict(type=int, default=8765, show_default=True, help="Server port (HTTP page and WebSocket).")),
    ("--metrics-port", ["AVATARD_METRICS_PORT"], dict(type=int, help="Also serve GET /metrics on 127.0.0.1:PORT (loopback only; "
                                                 "for local mode, whose server port is not open).")),
    ("--local-display", ["AVATARD_LOCAL_DISPLAY"], dict(is_flag=True, help="Also show the local window in server mode.")),
    ("--input-device", ["AVATARD_INPUT_DEVICE"], dict(help="Local mode's microphone: name substring or index (see --list-devices) [default: the system's].")),
    ("--output-device", ["AVATARD_OUTPUT_DEVICE"], dict(help="Local mode's speaker: name substring or index (see --list-devices) [default: the system's].")),
    ("--barge-in", ["AVATARD_BARGE_IN"], dict(type=click.Choice(BARGE_IN), default="auto", show_default=True,
                                             help="Hear the microphone while the avatar speaks; auto = on, except with local speakers "
                                                  "and --aec off (they echo).")),
    ("--aec", ["AVATARD_AEC"], dict(type=click.Choice(AEC), default="auto", show_default=True,
                                   help="Cancel the avatar's echo in the microphone (WebRTC AEC3); auto = on in local mode "
                                        "when a speaker and a microphone are both in use.")),
    ("--aec-ns", ["AVATARD_AEC_NS"], dict(is_flag=True, help="Also suppress noise in the microphone (with --aec).")),
    ("--aec-tuning", ["AVATARD_AEC_TUNING"], dict(type=click.Choice(AEC_TUNINGS), default=DEFAULT_AEC_TUNING, show_default=True,
                                                 help="AEC3's echo suppressor: double-talk keeps more of someone talking over "
                                                      "the avatar; webrtc is WebRTC's stock tuning.")),
    ("--record", ["AVATARD_RECORD"], dict(help="Also record the avatar (picture and voice) to this .mp4 file.")),
    ("--renderer", ["AVATARD_RENDERER"], dict(type=click.Choice(RENDERERS), default="auto", show_default=True,
                                             help="auto = bithuman when --model and --api-secret are set, else builtin.")),
    ("--brain", ["AVATARD_BRAIN"], dict(type=click.Choice(BRAINS), default="auto", show_default=True,
                                       help="auto = gemini when a Google key is set or --vertex with a project, else local (offline voice + echo).")),
    ("--control-socket", ["AVATARD_SOCKET"], dict(help="Control socket path [default: $RUNTIME_DIRECTORY/avatard.sock, "
                                                        "else $XDG_RUNTIME_DIR/avatard.sock, else /tmp/avatard-$UID.sock].")),
    ("--size", ["AVATARD_SIZE"], dict(default="512x512", show_default=True, help="Built-in avatar frame size, WIDTHxHEIGHT.")),
    ("--fps", ["AVATARD_FPS"], dict(type=int, default=25, show_default=True, help="Frames per second (must divide 16000).")),
    ("--jpeg-quality", ["AVATARD_JPEG_QUALITY"], dict(type=int, default=80, show_default=True, help="JPEG quality of streamed frames.")),
    ("--max-clients", ["AVATARD_MAX_CLIENTS"], dict(type=int, default=10, show_default=True, help="WebSocket clients at once (a WebRTC viewer is its WebSocket client); more are refused (1013).")),
    ("--max-clients-per-ip", ["AVATARD_MAX_CLIENTS_PER_IP"], dict(type=int, default=4, show_default=True,
                                                                 help="WebSocket clients from one address; more are refused (1013).")),
    ("--token", ["AVATARD_TOKEN"], dict(help="Token that lets clients talk and read /metrics (?token=... or Authorization: "
                                             "Bearer); never logged. Prefer AVATARD_TOKEN or --token-file: every local user "
                                             "can read a command line. [default beyond loopback: generated once, kept in "
                                             "$STATE_DIRECTORY or ~/.local/state/avatard/token]")),
    ("--token-file", ["AVATARD_TOKEN_FILE"], dict(help="Read the token from this file (one line).")),
    ("--viewer-token", ["AVATARD_VIEWER_TOKEN"], dict(help="Token that lets clients only watch (no audio, text or control); never logged.")),
    ("--no-auth", ["AVATARD_NO_AUTH"], dict(is_flag=True, help="Serve beyond loopback without a token, on purpose: anyone who "
                                                             "reaches the port can make the avatar speak.")),
    ("--share-transcripts", ["AVATARD_SHARE_TRANSCRIPTS"], dict(is_flag=True, help="Send what each user said to every client "
                                                                                 "that may talk [default: only back to its author].")),
    ("--allow-origin", ["AVATARD_ALLOW_ORIGIN"], dict(multiple=True, help="Allowed Origin for browsers (repeatable; * for any) "
                                                                         "[default: the page's own origin].")),
    ("--tls", ["AVATARD_TLS"], dict(type=click.Choice(TLS_MODES), help="Serve HTTPS/WSS with a certificate made once for "
                                    "this host's names and addresses, kept in $STATE_DIRECTORY or ~/.local/state/avatard; "
                                    "its SHA-256 fingerprint is logged.")),
    ("--tls-cert", ["AVATARD_TLS_CERT"], dict(help="Serve HTTPS/WSS with this certificate (PEM, chain allowed); needs --tls-key.")),
    ("--tls-key", ["AVATARD_TLS_KEY"], dict(help="The certificate's private key (PEM, unencrypted).")),
    ("--ice-server", ["AVATARD_ICE_SERVERS"], dict(multiple=True, help="STUN or TURN server for WebRTC (repeatable; space-"
                                                   "separated in the environment): stun:HOST[:PORT], turn:HOST[:PORT]"
                                                   "[?transport=udp|tcp], turns:HOST[:PORT]?transport=tcp [default: none, "
                                                   "host candidates only, which is all a LAN needs].")),
    ("--turn-username", ["AVATARD_TURN_USERNAME"], dict(help="Username for the --ice-server turn: URLs.")),
    ("--turn-password", ["AVATARD_TURN_PASSWORD"], dict(help="Password for the --ice-server turn: URLs; never logged. "
                                                             "Prefer the environment: every local user can read a command line.")),
    ("--webrtc-codec", ["AVATARD_WEBRTC_CODEC"], dict(type=click.Choice(VIDEO_CODECS), default="vp8", show_default=True,
                                                      help="Video codec for WebRTC viewers (encoded once for all of them).")),
    ("--gemini-base-url", ["GEMINI_BASE_URL"], dict(help="Live API endpoint (proxy, regional endpoint) [default: the SDK's; "
                                                         "GOOGLE_GEMINI_BASE_URL also works].")),
    ("--gemini-ca-file", ["GEMINI_CA_FILE"], dict(help="Extra CA certificate (PEM) to trust for the Live API, added to the default trust.")),
    ("--vertex", ["GOOGLE_GENAI_USE_VERTEXAI"], dict(is_flag=True, help="Use Gemini through Vertex AI (needs --gcp-project; "
                                                                       "credentials from GOOGLE_APPLICATION_CREDENTIALS / ADC).")),
    ("--gcp-project", ["GOOGLE_CLOUD_PROJECT"], dict(help="Google Cloud project for Vertex AI.")),
    ("--gcp-location", ["GOOGLE_CLOUD_LOCATION"], dict(default=DEFAULT_GCP_LOCATION, show_default=True,
                                                       help="Google Cloud location (region) for Vertex AI.")),
    ("--gestures-file", ["AVATARD_GESTURES_FILE"], dict(help='Keyword gestures, JSON or TOML: {"mode": "extend"|"replace", "keywords": {gesture: [words]}}.')),
    ("--gesture-cooldown", ["AVATARD_GESTURE_COOLDOWN"], dict(type=float, default=3.0, show_default=True,
                                                             help="Seconds before the same keyword gesture fires again.")),
    ("--camera", ["AVATARD_CAMERA"], dict(help="Camera for the avatar's eyes: a device index, a /dev/video* path, or a video file.")),
    ("--camera-fps", ["AVATARD_CAMERA_FPS"], dict(type=float, default=1.0, show_default=True,
                                                 help="Camera frames per second sent to Gemini (at most 1).")),
    ("--greet", ["AVATARD_GREET"], dict(help="Say TEXT with a wave when someone arrives; 'model' lets Gemini greet in its own words.")),
    ("--greet-after", ["AVATARD_GREET_AFTER"], dict(type=float, default=30.0, show_default=True,
                                                   help="Greet only when the scene was empty this many seconds before.")),
    ("--janus", ["AVATARD_JANUS"], dict(multiple=True, help="Broadcast to this Janus server's HTTP API, e.g. "
                                                           "http://127.0.0.1:8088/janus (repeatable: one per server; "
                                                           "the variable takes a space-separated list).")),
    ("--janus-admin-key", ["AVATARD_JANUS_ADMIN_KEY"], dict(help="The streaming plugin's admin_key, needed to create "
                                                                 "the mountpoint (never logged).")),
    ("--janus-mountpoint", ["AVATARD_JANUS_MOUNTPOINT"], dict(type=int, default=DEFAULT_MOUNTPOINT, show_default=True,
                                                              help="Id of the mountpoint avatard keeps on every Janus server.")),
    ("--janus-video-codec", ["AVATARD_JANUS_VIDEO_CODEC"], dict(type=click.Choice(VIDEO_CODECS), default="vp8",
                                                                show_default=True, help="Video codec of the broadcast.")),
    ("--janus-pin", ["AVATARD_JANUS_PIN"], dict(help="PIN viewers must give to watch the broadcast (never logged).")),
    ("--log-level", ["AVATARD_LOG_LEVEL"], dict(type=click.Choice(LOG_LEVELS), default="info", show_default=True, help="Log level.")),
    ("--log-format", ["AVATARD_LOG_FORMAT"], dict(type=click.Choice(LOG_FORMATS), default="text", show_default=True, help="Log format.")),
]
SECRET_PARAMS = {"api_secret", "gemini_api_key", "token", "viewer_token", "turn_password", "janus_admin_key",
                 "janus_pin"}


def _decorate(func):
    for flag, envvars, kwargs in reversed(OPTIONS):
        func = click.option(flag, envvar=envvars, show_envvar=True, **kwargs)(func)
    return func


def _apply_env_file(ctx: click.Context, params: dict, path: str | None) -> None:
    """Fill parameters still at their default from a .env file (precedence: below flags and environment)."""
    if path is None:
        if not os.path.isfile(".env"):
            return
        path = ".env"
    elif not os.path.isfile(path):
        raise ConfigError(f"--env-file: file not found: {path}")
    values = dotenv.dotenv_values(path)
    for param in ctx.command.params:
        if param.name not in params or ctx.get_parameter_source(param.name) != click.core.ParameterSource.DEFAULT:
            continue
        for var in param.envvar or ():
            if values.get(var) is not None:
                try:
                    params[param.name] = param.type_cast_value(ctx, values[var] if not param.multiple else values[var].split())
                except click.BadParameter as exc:
                    raise ConfigError(f"{param.opts[0]}: {values[var] if param.name not in SECRET_PARAMS else '***'} "
                                      f"from {path} ({var}): {exc.message}") from None
                break


def _list_devices(ctx: click.Context, param, value: bool) -> None:
    if not value:
        return
    from .local.devices import describe
    click.echo(describe())
    ctx.exit(0)


def build_config(params: dict) -> Config:
    width, height = parse_size(params.pop("size"))
    params["control_socket"] = params["control_socket"] or default_control_socket()
    params["allow_origin"] = tuple(params["allow_origin"])
    params["ice_server"] = tuple(params["ice_server"])
    params["janus"] = tuple(params["janus"])
    if params["token_file"] is not None:
        if params["token"] is not None:
            raise ConfigError("--token-file: give either --token (AVATARD_TOKEN) or --token-file, not both")
        params["token"] = read_token_file(params["token_file"])
    if params["server"] and params["token"] is None and not params["no_auth"] and not is_loopback(params["host"]):
        # Beyond loopback without a token: secure by default, with a token made once (avatard.token_file).
        params["token"], params["token_file"] = load_or_create(default_state_directory())
    return Config(width=width, height=height, **params)


def load_tls(config: Config):
    """The server's TLS pair, loaded (and for ``--tls self-signed`` made first): None without TLS.
    Any problem with the files stops start-up here, before anything runs, with one line."""
    if not (config.server and config.tls_on):
        return None
    from .tls import certificate, self_signed
    if config.tls == TLS_SELF_SIGNED:
        cert, key = self_signed.load_or_create(default_state_directory(), config.host)
        return certificate.load(cert, key, "--tls", "--tls")
    return certificate.load(config.tls_cert, config.tls_key)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@_decorate
@click.option("--env-file", type=click.Path(dir_okay=False), help="Read settings from this file [default: ./.env if present].")
@click.option("--list-devices", is_flag=True, is_eager=True, expose_value=False, callback=_list_devices,
              help="Print the sound devices local mode can use, and exit.")
@click.version_option(package_name="avatard")
@click.pass_context
def command(ctx: click.Context, env_file: str | None, **params) -> None:
    """avatard: a talking-avatar daemon (Gemini Live voice, lip-synced avatar, browser and local output).

    With no keys it runs on its embedded default: a built-in drawn avatar and an offline voice.
    """
    _apply_env_file(ctx, params, env_file)
    config = build_config(params)
    from . import logs
    logs.setup(config.log_level, config.log_format, [config.api_secret, config.gemini_api_key, config.token,
                                                     config.viewer_token, config.turn_password, config.janus_admin_key,
                                                     config.janus_pin])
    tls = load_tls(config)
    from . import app
    app.main(config, tls)


def _deliberate(exc: BaseException) -> AvatardError | None:
    """The AvatardError inside a (possibly nested) exception group from the root nursery, if any."""
    if isinstance(exc, AvatardError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _deliberate(inner)
        if found is not None:
            return found
    return None


def main(argv: list[str] | None = None) -> None:
    try:
        command.main(args=argv, prog_name="avatard", standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"avatard: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except Exception as exc:
        error = _deliberate(exc)
        if error is None:
            raise
        click.echo(f"avatard: error: {error}", err=True)
        sys.exit(2 if isinstance(error, ConfigError) else 1)
    except click.exceptions.Abort:
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
