"""``avatarctl``: drive a running avatard over its control socket.

Exit codes: 0 ok, 1 the daemon refused (its message is printed), 2 usage error, 3 daemon not reachable.
"""

from __future__ import annotations

import base64
import json
import socket
import sys

import click

from avatard.constants import MAX_IMAGE_BYTES
from avatard.paths import default_control_socket
from avatard.protocol import control as proto

REPLY_TIMEOUT = 10.0  # a say/ask waits for room in the brain's queue; anything longer means a stuck daemon
EXIT_REFUSED, EXIT_UNREACHABLE = 1, 3


class Unreachable(click.ClickException):
    exit_code = EXIT_UNREACHABLE


class Refused(click.ClickException):
    exit_code = EXIT_REFUSED


class Connection:
    """One JSON-lines conversation with the daemon."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(REPLY_TIMEOUT)
        try:
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise Unreachable(f"avatard is not running at {path}") from None
        except PermissionError:
            raise Unreachable(f"no permission to use {path} (are you in the avatard group?)") from None
        self.reader = self.sock.makefile("rb")

    def request(self, cmd: str, **fields) -> dict:
        self.sock.sendall(proto.request(cmd, **fields))
        return self.next_line()

    def next_line(self) -> dict:
        try:
            line = self.reader.readline()
        except socket.timeout:
            raise Unreachable(f"avatard at {self.path} did not answer within {REPLY_TIMEOUT:.0f} s") from None
        if not line:
            raise Unreachable(f"avatard at {self.path} closed the connection")
        return json.loads(line)


class State:
    def __init__(self, socket_path: str, as_json: bool) -> None:
        self.socket_path = socket_path
        self.as_json = as_json

    def call(self, cmd: str, **fields) -> dict:
        reply = Connection(self.socket_path).request(cmd, **fields)
        if not reply.get("ok"):
            raise Refused(reply.get("error", "refused"))
        return reply

    def show(self, reply: dict, text: str | None = None) -> None:
        if self.as_json:
            click.echo(json.dumps(reply))
        elif text:
            click.echo(text)


pass_state = click.make_pass_decorator(State)


def _set_json(ctx: click.Context, param, value: bool) -> None:
    if value:
        ctx.find_object(State).as_json = True


def command(group):
    """A subcommand that also takes ``--json`` after its name (``avatarctl status --json``)."""
    def decorate(func):
        func = click.option("--json", "_json", is_flag=True, expose_value=False, callback=_set_json,
                            help="Print machine-readable JSON.")(func)
        return group.command()(func)
    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", envvar="AVATARD_SOCKET", show_envvar=True,
              help="Control socket of the daemon [default: as avatard's --control-socket].")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON, one object per line.")
@click.pass_context
def cli(ctx: click.Context, socket_path: str | None, as_json: bool) -> None:
    """Control a running avatard."""
    ctx.obj = State(socket_path or default_control_socket(), as_json)


@command(cli)
@pass_state
def status(state: State) -> None:
    """Renderer, brain, uptime, frame counters, last turn latency, each client (transport, bit rate, RTT, loss)
    and each Janus server the avatar is broadcast through."""
    reply = state.call("status")
    if state.as_json:
        state.show(reply)
        return
    latency = reply.get("last_latency")
    lines = [
        f"status:     {reply['status']}",
        f"renderer:   {reply['renderer']} {reply['size']} @ {reply['fps']} fps",
        f"brain:      {reply['brain']} ({reply['brain_state']})",
        f"uptime:     {reply['uptime_s']} s",
        f"frames:     {reply['frames_rendered']} rendered, {reply['frames_dropped']} dropped",
        f"turns:      {reply['turns']}, interrupts: {reply['interrupts']}, brain reconnects: {reply['reconnects']}",
        f"clients:    {reply['clients']}",
        "latency:    " + (f"{latency['total_ms']} ms (input->audio {latency['input_to_audio_ms']} ms, "
                          f"audio->frame {latency['audio_to_frame_ms']} ms)" if latency else "no turn yet"),
    ]
    p95 = {k: v for k, v in (reply.get("latency_p95_ms") or {}).items() if v is not None}
    if p95:
        lines.append("p95:        " + ", ".join(f"{name.replace('_', ' ')} {value} ms" for name, value in p95.items()))
    if reply.get("brain_failure"):
        lines.append(f"failure:    {reply['brain_failure']}")
    if reply.get("gemini_model"):
        lines.append(f"model:      {reply['gemini_model']} ({reply.get('gemini_rules')} rules), tokens: "
                     f"{reply.get('prompt_tokens', 0)} prompt, {reply.get('response_tokens', 0)} response")
    if reply.get("camera"):
        presence = reply.get("presence") or {}
        lines.append(f"camera:     {reply['camera']}" + (" (frames going to the model)" if reply.get("camera_to_model") else "")
                     + f", {reply.get('camera_frames_sent', 0)} sent"
                     + (f", presence: {presence['faces']} face(s), {presence['arrivals']} arrivals" if presence else "")
                     + (f", presence off: {reply['presence_unavailable']}" if reply.get("presence_unavailable") else ""))
    if reply.get("server"):
        lines.append(f"server:     {reply['server']}")
        tls = reply.get("tls")
        lines.append(f"tls:        on, certificate SHA-256 {tls['fingerprint_sha256']}, "
                     f"{'self-signed, ' if tls['self_signed'] else ''}valid until {tls['not_after'][:10]}, "
                     f"{reply.get('tls_failures', 0)} failed handshakes" if tls else "tls:        off")
    lines.extend(_viewer_line(client) for client in reply.get("client_list", ()))
    for janus in reply.get("janus") or ():
        state_text = f"mountpoint {janus['mountpoint']}" if janus["connected"] else f"away ({janus['last_error']})"
        lines.append(f"janus:      {janus['url']}: {state_text}, {janus['packets_sent']} packets sent, "
                     f"{janus['packets_dropped']} dropped, {janus['recreations']} re-creations")
    click.echo("\n".join(lines))


def _viewer_line(client: dict) -> str:
    """One client: its transport and, for a WebRTC viewer, what its peer reports (bit rate, RTT, loss)."""
    line = f"  {client['id']:<11} {client.get('transport', 'websocket'):<9} {client['remote']} ({client['role']})"
    rtc = client.get("webrtc")
    if rtc is not None:
        rtt = "?" if rtc["rtt_ms"] is None else f"{rtc['rtt_ms']} ms"
        line += (f", {rtc['state']}, {rtc['bitrate_kbps']} kbit/s, rtt {rtt}, lost {rtc['packets_lost']} "
                 f"({100 * rtc['fraction_lost']:.1f} %), dropped {rtc['video_dropped']} video / {rtc['audio_dropped']} audio")
    else:
        line += f", {client['frames_sent']} frames sent, {client['video_dropped']} dropped"
    return line


@command(cli)
@pass_state
def interrupt(state: State) -> None:
    """Stop the avatar speaking, everywhere, now."""
    state.show(state.call("interrupt"), "interrupted")


@command(cli)
@pass_state
def replay(state: State) -> None:
    """Stream the daemon's --audio-file to the brain again (as key 1 in the window does)."""
    state.show(state.call("replay"), "replaying")


@command(cli)
@click.argument("name")
@pass_state
def gesture(state: State, name: str) -> None:
    """Play gesture NAME (see `avatarctl gestures`)."""
    state.show(state.call("gesture", name=name), f"gesture {name}")


@command(cli)
@pass_state
def gestures(state: State) -> None:
    """List the gestures the renderer knows."""
    reply = state.call("gestures")
    state.show(reply, "\n".join(reply["gestures"]))


@command(cli)
@click.argument("text")
@pass_state
def say(state: State, text: str) -> None:
    """Speak TEXT verbatim (no model turn)."""
    state.show(state.call("say", text=text), "queued")


@command(cli)
@click.argument("text")
@pass_state
def ask(state: State, text: str) -> None:
    """Send TEXT to the brain as a user turn."""
    state.show(state.call("ask", text=text), "asked")


@command(cli)
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@pass_state
def look(state: State, image: str) -> None:
    """Show the avatar one still IMAGE (JPEG or PNG, at most 512 KiB), e.g. before `avatarctl ask "what is this?"`."""
    with open(image, "rb") as file:
        data = file.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise click.BadParameter(f"{image} is over {MAX_IMAGE_BYTES} bytes; scale it to at most 768 px",
                                 param_hint="IMAGE")
    state.show(state.call("look", image=base64.b64encode(data).decode()), "sent")


@command(cli)
@click.argument("on_off", metavar="on|off", type=click.Choice(proto.CAMERA_STATES))
@pass_state
def camera(state: State, on_off: str) -> None:
    """Turn the avatar's camera on or off (off: no frames reach the model, the local camera is released)."""
    reply = state.call("camera", state=on_off)
    state.show(reply, f"camera {reply['camera']}")


@command(cli)
@click.argument("path", type=click.Path(dir_okay=False, writable=True))
@pass_state
def snapshot(state: State, path: str) -> None:
    """Save the current avatar frame as a JPEG at PATH."""
    reply = state.call("snapshot")
    with open(path, "wb") as out:
        out.write(base64.b64decode(reply.pop("jpeg")))
    state.show(reply, f"frame {reply['index']} ({reply['width']}x{reply['height']}) -> {path}")


@command(cli)
@pass_state
def metrics(state: State) -> None:
    """Print the daemon's numbers in Prometheus text format: what GET /metrics serves, in every mode (local
    mode has no HTTP server; e.g. for node_exporter's textfile collector)."""
    reply = state.call("metrics")
    if state.as_json:
        state.show(reply)
        return
    click.echo(reply["text"], nl=False)


@command(cli)
@click.option("--events", "kinds", multiple=True, type=click.Choice(proto.EVENT_KINDS),
              help="Only these kinds (repeatable) [default: all but frame].")
@pass_state
def subscribe(state: State, kinds: tuple[str, ...]) -> None:
    """Print events as JSON lines until Ctrl-C."""
    conn = Connection(state.socket_path)
    fields = {"events": list(kinds)} if kinds else {}
    reply = conn.request("subscribe", **fields)
    if not reply.get("ok"):
        raise Refused(reply.get("error", "refused"))
    conn.sock.settimeout(None)
    try:
        while True:
            click.echo(json.dumps(conn.next_line()))
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    except Unreachable as exc:
        click.echo(f"avatarctl: {exc.message}", err=True)
        sys.exit(EXIT_UNREACHABLE)


def main() -> None:
    cli.main(prog_name="avatarctl")
