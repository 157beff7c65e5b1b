"""Issue 13, TLS: the server port over HTTPS/WSS, against the real daemon and real certificates.

A ``--tls self-signed`` daemon keeps its pair in ``STATE_DIRECTORY`` (a tmp dir here); a
``--tls-cert``/``--tls-key`` daemon gets a pair issued by a test CA (trustme), so the client can verify
the chain and the name the way a browser does. Every connection goes to loopback.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import sys

import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from wsclient import Client, open_client

from avatard.server.websocket import MAX_PENDING, TLS_HANDSHAKE_TIMEOUT
from avatard.tls import certificate, self_signed
from avatard.tls.host_addresses import certificate_names

TLS_SERVER = ("--server", "--host", "127.0.0.1", "--port", "0", "--tls", "self-signed")
FINGERPRINT_RE = re.compile(r"certificate SHA-256 ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})")


# -- the self-signed pair on disk ---------------------------------------------------------------------


def test_self_signed_is_made_once_owner_only_and_covers_the_host(tmp):
    state = tmp / "state"
    cert_path, key_path = self_signed.load_or_create(str(state), "127.0.0.2")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert not [p for p in os.listdir(state) if p.endswith(".tmp")]
    loaded = certificate.load(cert_path, key_path)
    names, addresses = certificate_names("127.0.0.2")
    assert {"localhost", socket.gethostname(), "127.0.0.1", "::1", "127.0.0.2"} <= set(loaded.names)
    assert set(loaded.names) == {*names, *map(str, addresses)}
    assert loaded.self_signed
    cert = certificate.read_certificate(cert_path)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= self_signed.VALIDITY  # Apple's 825 days

    before = (open(cert_path, "rb").read(), open(key_path, "rb").read())
    assert self_signed.load_or_create(str(state), "127.0.0.2") == (cert_path, key_path)
    assert (open(cert_path, "rb").read(), open(key_path, "rb").read()) == before, "reused, not made again"


def fingerprint_of(cert_path) -> str:
    return certificate.fingerprint(certificate.read_certificate(str(cert_path)))


@pytest.mark.parametrize("change", ["new address", "expiring", "clock went back", "key replaced", "key garbage",
                                    "cert garbage"])
def test_self_signed_is_made_again_when_it_no_longer_serves(tmp, change):
    state = str(tmp / "state")
    cert_path, key_path = self_signed.load_or_create(state, "127.0.0.2")
    first = fingerprint_of(cert_path)
    now, host = None, "127.0.0.2"
    if change == "new address":
        host = "127.0.0.3"
    elif change == "expiring":
        now = datetime.datetime.now(datetime.timezone.utc) + self_signed.VALIDITY - self_signed.RENEW_BEFORE
    elif change == "clock went back":
        now = datetime.datetime.now(datetime.timezone.utc) - 2 * self_signed.CLOCK_SKEW
    elif change == "key replaced":
        other = ec.generate_private_key(ec.SECP256R1())
        with open(key_path, "wb") as f:
            f.write(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    elif change == "key garbage":
        with open(key_path, "w") as f:
            f.write("not a key\n")
    else:
        with open(cert_path, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    assert self_signed.load_or_create(state, host, now) == (cert_path, key_path)
    assert fingerprint_of(cert_path) != first
    loaded = certificate.load(cert_path, key_path)  # a working pair again
    if change == "new address":
        assert "127.0.0.3" in loaded.names
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600


# -- bad pairs stop the real daemon with one line ------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def issued(ca, tmp):
    """A pair for avatar.test and 127.0.0.1 issued by the test CA, as PEM files."""
    cert = ca.issue_cert("avatar.test", "127.0.0.1")
    cert_path, key_path = tmp / "server.crt", tmp / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def run_daemon(tmp, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARD_")}
    env["STATE_DIRECTORY"] = str(tmp / "state")
    return subprocess.run([sys.executable, "-m", "avatard", "--server", "--port", "0", "--host", "127.0.0.1",
                           "--control-socket", str(tmp / "c.sock"), *args], capture_output=True, text=True,
                          timeout=30, env=env, cwd=tmp)


def test_bad_certificate_or_key_stops_with_one_line_and_no_key_material(tmp, issued):
    cert_path, key_path = issued
    key_pem = key_path.read_text()
    secret_line = key_pem.splitlines()[1]  # a line of the key's base64
    (tmp / "garbage.pem").write_text("hello, I am not PEM\n")
    other_key = tmp / "other.key"
    other_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    encrypted = tmp / "encrypted.key"
    encrypted.write_bytes(serialization.load_pem_private_key(key_pem.encode(), None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    unreadable = tmp / "unreadable.key"
    unreadable.write_text(key_pem)
    os.chmod(unreadable, 0)
    cases = [
        (("--tls-cert", str(tmp / "missing.crt"), "--tls-key", str(key_path)),
         f"--tls-cert: cannot read {tmp / 'missing.crt'}: No such file or directory"),
        (("--tls-cert", str(tmp / "garbage.pem"), "--tls-key", str(key_path)),
         f"--tls-cert: {tmp / 'garbage.pem'} holds no PEM certificate"),
        (("--tls-cert", str(cert_path), "--tls-key", str(tmp / "garbage.pem")),
         f"--tls-key: {tmp / 'garbage.pem'} holds no PEM private key"),
        (("--tls-cert", str(cert_path), "--tls-key", str(other_key)),
         f"--tls-key: {other_key} is not the key of the certificate in {cert_path}"),
        (("--tls-cert", str(cert_path), "--tls-key", str(encrypted)), f"--tls-key: {encrypted} is encrypted"),
        (("--tls-cert", str(key_path), "--tls-key", str(key_path)), f"--tls-cert: {key_path} holds no PEM certificate"),
        (("--tls-cert", str(cert_path)), "--tls-cert: needs --tls-key too"),
        (("--tls", "self-signed", "--tls-cert", str(cert_path), "--tls-key", str(key_path)),
         "--tls: self-signed contradicts --tls-cert/--tls-key"),
        (("--tls", "selfsigned"), "--tls"),
    ]
    if os.geteuid() != 0:  # root reads a mode-0 file anyway
        cases.append((("--tls-cert", str(cert_path), "--tls-key", str(unreadable)),
                      f"--tls-key: cannot read {unreadable}: Permission denied"))
    for args, expected in cases:
        result = run_daemon(tmp, *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (args, result.stderr)
        assert len(lines) == 1 and "Traceback" not in result.stderr, (args, result.stderr)
        assert lines[0].startswith("avatard: error: ") and expected in lines[0], (args, lines[0])
        assert secret_line not in result.stderr and "PRIVATE KEY" not in result.stderr


def test_self_signed_in_an_unwritable_state_directory_stops_with_one_line(tmp):
    (tmp / "state").write_text("a file where the directory should be\n")
    result = run_daemon(tmp, "--tls", "self-signed")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("avatard: error: --tls: cannot keep a self-signed certificate in ")


# -- the real daemon over TLS --------------------------------------------------------------------------


def trusting(cert_path) -> ssl.SSLContext:
    """A client context that trusts exactly this certificate (or CA), checking names as browsers do."""
    context = ssl.create_default_context(cafile=str(cert_path))
    return context


def https_get(port: int, path: str, context: ssl.SSLContext, host: str = "127.0.0.1",
              server_hostname: str | None = None) -> tuple[int, dict, bytes, bytes]:
    """(status, headers, body, the server's certificate in DER) for one request."""
    with socket.create_connection((host, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname or host) as tls:
            der = tls.getpeercert(binary_form=True)
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {server_hostname or host}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body, der


def colon(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


async def test_self_signed_daemon_serves_https_and_wss_with_the_logged_fingerprint(daemon_factory, tmp):
    state = tmp / "state"
    daemon = daemon_factory(*TLS_SERVER, env={"STATE_DIRECTORY": str(state)})
    cert_path = state / self_signed.CERT_FILE
    assert stat.S_IMODE((state / self_signed.KEY_FILE).stat().st_mode) == 0o600
    logged = FINGERPRINT_RE.search(daemon.log()).group(1)
    port = daemon.port
    assert f"open https://127.0.0.1:{port}/ in a browser" in daemon.log()

    # Verified as a browser that trusts the certificate would: chain and name (localhost and 127.0.0.1).
    for host, name in (("127.0.0.1", None), ("127.0.0.1", "localhost")):
        status, _, body, der = https_get(port, "/healthz", trusting(cert_path), host, name)
        assert status == 200 and json.loads(body)["ok"] is True
        assert colon(hashlib.sha256(der).digest()) == logged
    tls = daemon.status()["tls"]
    assert tls["fingerprint_sha256"] == logged and tls["self_signed"] is True
    assert daemon.status()["server"] == f"https://127.0.0.1:{port}/"
    shown = daemon.ctl("status").stdout
    assert f"tls:        on, certificate SHA-256 {logged}, self-signed, valid until " in shown

    status, headers, page, _ = https_get(port, "/", trusting(cert_path))
    assert status == 200 and headers["content-type"].startswith("text/html") and b"<html" in page.lower()
    status, _, metrics, _ = https_get(port, "/metrics", trusting(cert_path))
    assert status == 200
    assert b"avatard_tls_enabled 1.0" in metrics
    assert f'avatard_tls_certificate_info{{self_signed="true",sha256="{logged}"}} 1.0'.encode() in metrics
    expiry = float(re.search(rb"\navatard_tls_certificate_expiry_timestamp_seconds (\S+)", metrics).group(1))
    assert expiry == certificate.read_certificate(str(cert_path)).not_valid_after_utc.timestamp()

    # The seed's protocol, unchanged inside wss.
    async with open_client(port, ssl_context=trusting(cert_path)) as ws:
        client = Client(ws)
        await client.json_of("status", status="connected")
        await client.until(lambda m: not isinstance(m, dict) and hasattr(m, "jpeg"))
        await client.send_json({"type": "text_input", "data": {"text": "over TLS"}})
        await client.json_of("transcription", role="assistant", text="over TLS")
    # A second start reuses the certificate: a browser told to trust it keeps trusting it.
    daemon.stop()
    again = daemon_factory(*TLS_SERVER, env={"STATE_DIRECTORY": str(state)})
    assert FINGERPRINT_RE.search(again.log()).group(1) == logged
    assert "made a self-signed certificate" not in again.log()


async def read_all(stream, timeout: float) -> bytes:
    data = b""
    with trio.fail_after(timeout):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def test_plain_http_garbage_and_silence_on_the_tls_port_cost_only_their_connection(daemon_factory, tmp):
    state = tmp / "state"
    daemon = daemon_factory(*TLS_SERVER, env={"STATE_DIRECTORY": str(state)})
    port = daemon.port
    async with open_client(port, ssl_context=trusting(state / self_signed.CERT_FILE)) as ws:
        client = Client(ws)
        await client.json_of("status", status="connected")
        # A browser that typed http:// is sent to https://; a client speaking ws:// gets a 400.
        plain = await trio.open_tcp_stream("127.0.0.1", port)
        await plain.send_all(f"GET /?token=x HTTP/1.1\r\nHost: avatar.test:{port}\r\n\r\n".encode())
        reply = await read_all(plain, 10)
        assert reply.startswith(b"HTTP/1.1 307 ") and f"location: https://avatar.test:{port}/?token=x".encode() in reply
        ws_plain = await trio.open_tcp_stream("127.0.0.1", port)
        await ws_plain.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        assert (await read_all(ws_plain, 10)).startswith(b"HTTP/1.1 400 ")
        # A TLS record that is no ClientHello, and a client that refuses the certificate.
        garbage = await trio.open_tcp_stream("127.0.0.1", port)
        await garbage.send_all(b"\x16\x03\x01\x00\x05hello" + os.urandom(300))
        await read_all(garbage, 10)  # closed by the server, within the deadline
        distrusting = ssl.create_default_context()  # the system's CAs: our self-signed one is not among them
        with pytest.raises(trio.BrokenResourceError):
            tls = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), distrusting, server_hostname="localhost")
            await tls.do_handshake()
        # A peer that connects and says nothing is closed once the handshake deadline passes.
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        assert await read_all(silent, TLS_HANDSHAKE_TIMEOUT + 10) == b""
        # Through all of it the wss client kept streaming.
        frames = len(client.video)
        await client.until(lambda m: len(client.video) >= frames + 25)
        await client.send_json({"type": "text_input", "data": {"text": "still here"}})
        await client.json_of("transcription", role="assistant", text="still here")
    status = daemon.status()
    assert status["plain_http_to_tls"] == 2
    assert status["tls_failures"] == 3  # garbage, distrust, silence
    assert status["pending_connections"] == 0
    assert "Traceback" not in daemon.log()
    assert daemon.proc.poll() is None


async def test_unfinished_handshakes_are_pending_connections_under_the_cap(daemon_factory, tmp):
    """A flood of half-open TLS handshakes (a ClientHello's first byte, then nothing) from one address
    costs that address its oldest sockets once MAX_PENDING is reached; a browser from another address
    still gets its page and its wss session."""
    state = tmp / "state"
    daemon = daemon_factory(*TLS_SERVER, env={"STATE_DIRECTORY": str(state)})
    port, flood = daemon.port, []
    for _ in range(MAX_PENDING + 16):
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
        await stream.send_all(b"\x16")
        flood.append(stream)
    context = trusting(state / self_signed.CERT_FILE)
    async with open_client(port, ssl_context=context) as ws:
        await Client(ws).json_of("status", status="connected")
        status = daemon.status()
        assert status["pending_connections"] <= MAX_PENDING
        assert status["pending_evicted"] >= 16
        assert https_get(port, "/healthz", context)[0] == 200
    for stream in flood:
        await stream.aclose()
    assert "Traceback" not in daemon.log()


async def test_given_certificate_is_verified_by_name_like_a_browser_does(daemon_factory, tmp, ca, issued):
    cert_path, key_path = issued
    daemon = daemon_factory("--tls-cert", str(cert_path), "--tls-key", str(key_path))
    port = daemon.port
    context = ssl.create_default_context()
    ca.configure_trust(context)
    status, _, body, der = https_get(port, "/healthz", context, "127.0.0.1", "avatar.test")
    assert status == 200 and json.loads(body)["ok"]
    tls = daemon.status()["tls"]
    assert tls["fingerprint_sha256"] == colon(hashlib.sha256(der).digest())
    assert tls["self_signed"] is False and tls["certificate"] == str(cert_path)
    assert sorted(tls["names"]) == ["127.0.0.1", "avatar.test"]
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(port, "/healthz", context, "127.0.0.1", "localhost")  # not a name of this certificate
    async with open_client(port, ssl_context=context) as ws:
        await Client(ws).json_of("status", status="connected")
    assert "Traceback" not in daemon.log()


def test_an_expired_certificate_is_served_with_one_warning(daemon_factory, ca, tmp):
    cert = ca.issue_cert("avatar.test", not_before=datetime.datetime(2020, 1, 1), not_after=datetime.datetime(2021, 1, 1))
    cert.cert_chain_pems[0].write_to_path(str(tmp / "old.crt"))
    cert.private_key_pem.write_to_path(str(tmp / "old.key"))
    daemon = daemon_factory("--tls-cert", str(tmp / "old.crt"), "--tls-key", str(tmp / "old.key"))
    [warning] = warnings(daemon.log())
    assert f"the certificate in {tmp / 'old.crt'} expired on 2021-01-01: browsers refuse it; renew it" in warning
    assert daemon.status()["tls"]["not_after"].startswith("2021-01-01")


# -- a LAN address, in a network namespace of our own ----------------------------------------------------


@pytest.fixture
def lan_namespace():
    """A network namespace with a veth pair, 198.18.0.7/24 on one end and 198.18.0.8/24 on the other (the
    "tablet"), loopback up; yields its name. Nothing leaves it."""
    name = f"avd-tls-{os.getpid()}"
    ip = ["ip", "-n", name]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for command in (["link", "add", "lan0", "type", "veth", "peer", "name", "lan1"],
                        ["addr", "add", "198.18.0.7/24", "dev", "lan0"], ["addr", "add", "198.18.0.8/24", "dev", "lan1"],
                        ["link", "set", "lo", "up"], ["link", "set", "lan0", "up"], ["link", "set", "lan1", "up"]):
            subprocess.run([*ip, *command], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def enter(namespace: str):
    """A preexec_fn that moves the child into ``namespace`` (setns(2), as ``ip netns exec`` does)."""
    def preexec():
        import ctypes
        fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)
    return preexec


def test_self_signed_covers_the_lan_address_a_browser_on_another_machine_uses(daemon_factory, tmp, lan_namespace):
    state = tmp / "state"
    daemon = daemon_factory("--server", "--host", "0.0.0.0", "--port", "0", "--tls", "self-signed",
                            env={"STATE_DIRECTORY": str(state)}, preexec_fn=enter(lan_namespace))
    names = daemon.status()["tls"]["names"]
    assert "198.18.0.7" in names and "198.18.0.8" in names
    assert not [n for n in names if n.startswith("fe80")], "link-local addresses need a zone id: left out"
    port = daemon.port
    assert re.search(rf"open https://198\.18\.0\.[78]:{port}/\?token=<token> in a browser", daemon.log())
    # From the "tablet" end, verifying the chain and the address as a browser that trusts the certificate.
    fetch = ("import ssl, socket, sys; c = ssl.create_default_context(cafile=sys.argv[1]); "
             "s = c.wrap_socket(socket.create_connection(('198.18.0.7', int(sys.argv[2])), timeout=10), "
             "server_hostname='198.18.0.7'); s.sendall(b'GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); "
             "print(s.recv(4096).split(b'\\r\\n')[0].decode())")
    result = subprocess.run(["ip", "netns", "exec", lan_namespace, sys.executable, "-c", fetch,
                             str(state / self_signed.CERT_FILE), str(port)], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "HTTP/1.1 200", result.stderr


# -- what the log says beyond loopback -----------------------------------------------------------------


def warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line and "avatard.ws" in line]


def test_beyond_loopback_one_warning_says_what_is_exposed_and_how_to_close_it(daemon_factory, tmp, issued):
    beyond = ("--server", "--host", "0.0.0.0", "--port", "0")
    token_only = daemon_factory(*beyond, env={"STATE_DIRECTORY": str(tmp / "a")})
    [warning] = warnings(token_only.log())
    assert "no TLS: the token, what users say and the avatar's picture and voice cross the network in clear" in warning
    assert "--tls self-signed" in warning
    token_only.stop()

    open_plain = daemon_factory(*beyond, "--no-auth", env={"STATE_DIRECTORY": str(tmp / "b")})
    [warning] = warnings(open_plain.log())
    assert "--no-auth: anyone who can reach 0.0.0.0:" in warning and "--tls self-signed" in warning
    open_plain.stop()

    secured = daemon_factory(*beyond, "--tls", "self-signed", env={"STATE_DIRECTORY": str(tmp / "c")})
    assert warnings(secured.log()) == []
    shown = re.search(r"open https://\[?([^ \]]+)\]?:(\d+)/\?token=<token> in a browser", secured.log())
    assert shown.group(1) in secured.status()["tls"]["names"] and int(shown.group(2)) == secured.port
    secured.stop()

    cert_path, key_path = issued  # a given certificate: its DNS name is the one to open
    given = daemon_factory(*beyond, "--tls-cert", str(cert_path), "--tls-key", str(key_path),
                           env={"STATE_DIRECTORY": str(tmp / "d")})
    assert warnings(given.log()) == []
    assert f"open https://avatar.test:{given.port}/?token=<token> in a browser" in given.log()
    given.stop()

    loopback = daemon_factory()
    assert warnings(loopback.log()) == []
