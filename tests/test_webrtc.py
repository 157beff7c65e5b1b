"""WebRTC viewers against the real daemon, in real headless Chromium, on a private network.

aioice offers no loopback candidates and Chromium hides its addresses behind mDNS names, so everything runs
inside network namespaces this module makes (tests/netns.py): the daemon in the server namespace, each
Chromium in a client namespace joined to it by its own veth link (198.18.i.0/24). Chromium gets
``--disable-features=WebRtcHideLocalIpsWithMdns`` (real host candidates) and a fake microphone that loops a
phrase synthesized with espeak-ng. The module's daemon serves TLS (``--tls self-signed``) and the pages open
``https://avatar.test:PORT/`` (``--host-resolver-rules`` maps the name to the daemon's address on that
client's link; Chromium trusts the certificate by its key's fingerprint, see test_tls_browser.py): a secure
context from TLS alone, as for a tablet on the LAN. The daemons that only one test starts serve plain http,
their origins treated as secure (``--unsafely-treat-insecure-origin-as-secure``).

What the page sees comes from ``RTCPeerConnection.getStats()`` (inbound-rtp: framesDecoded, packets, audio
energy); what the daemon sees from ``avatarctl status`` over the control socket (a Unix socket: it does not
care about network namespaces). Plain sync tests: Playwright runs its own event loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import start_daemon
from netns import Network
from playwright.sync_api import Browser, Page, expect, sync_playwright
from test_browser import CHROMIUM, CHROMIUM_ARGS
from test_tls_browser import NAME, spki_pin

from avatard.tls import self_signed

WAIT_MS = 15_000
TOKEN = "webrtc-test-token"
PORT = 8765  # inside the server namespace: nothing else listens there
VIEWER = Path(__file__).with_name("webrtc_viewer.py")

# The page's WebRTC numbers, from getStats: video frames decoded, audio packets and energy received, the
# microphone's packets sent.
RTC_STATS_JS = """async () => {
  const pc = avatard.rtc?.pc;
  if (!pc) return null;
  const out = { framesDecoded: 0, videoPackets: 0, audioPackets: 0, audioEnergy: 0, micPackets: 0, lost: 0 };
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out.framesDecoded = s.framesDecoded; out.videoPackets = s.packetsReceived; out.lost += s.packetsLost;
    } else if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.audioPackets = s.packetsReceived; out.audioEnergy = s.totalAudioEnergy; out.lost += s.packetsLost;
    } else if (s.type === 'outbound-rtp' && s.kind === 'audio') {
      out.micPackets = s.packetsSent;
    }
  });
  out.t = performance.now();
  return out;
}"""


@pytest.fixture(scope="module")
def net():
    with Network(clients=2, tag="wrtc") as network:
        yield network


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def daemon(net, state):
    short = Path(tempfile.mkdtemp(prefix="avw-", dir="/tmp"))  # Unix socket paths are limited to 108 bytes
    daemon = start_daemon(short, "--server", "--host", "0.0.0.0", "--port", str(PORT), "--token", TOKEN,
                          "--max-clients", "4", "--tls", "self-signed", env={"STATE_DIRECTORY": str(state)},
                          preexec_fn=net.server.enter)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def playwright():
    with sync_playwright() as p:
        yield p


def launch(playwright, net: Network, index: int, mic_wav: Path, tmp: Path, pin: str) -> Browser:
    """Chromium inside client namespace ``index``, trusting the certificate whose key has SPKI hash ``pin``."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: the WebRTC tests need Debian's chromium", pytrace=False)
    client = net.clients[index]
    home = tmp / f"home{index}"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache")}
    return playwright.chromium.launch(executable_path=client.wrap(CHROMIUM, tmp), env=env, args=[
        *CHROMIUM_ARGS,
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}",
        f"--host-resolver-rules=MAP {NAME} {client.server_address}",
        f"--ignore-certificate-errors-spki-list={pin}",
        "--unsafely-treat-insecure-origin-as-secure=" + ",".join(f"http://{client.server_address}:{PORT + i}" for i in (1, 2)),
    ])


@pytest.fixture(scope="module")
def browsers(playwright, net, mic_wav, tmp_path_factory, daemon, state):
    tmp = tmp_path_factory.mktemp("chromium")
    pin = spki_pin(state / self_signed.CERT_FILE)  # made by the daemon, for its addresses in the namespace
    launched = [launch(playwright, net, i, mic_wav, tmp, pin) for i in range(len(net.clients))]
    yield launched
    for browser in launched:
        browser.close()


@contextlib.contextmanager
def open_page(browser: Browser, net: Network, index: int, query: str = "", port: int = PORT):
    context = browser.new_context()
    page = context.new_page()
    failures: list[str] = []
    page.on("pageerror", lambda exc: failures.append(f"uncaught: {exc}"))
    page.on("console", lambda m: failures.append(f"console.error: {m.text}") if m.type == "error" else None)
    origin = f"https://{NAME}:{port}" if port == PORT else f"http://{net.clients[index].server_address}:{port}"
    try:
        page.goto(f"{origin}/?token={TOKEN}{query}")
        # window.avatard exists once app.js has run; if it never does (a script that failed to load), the
        # page's own errors say why.
        page.wait_for_function("window.avatard && avatard.connection === 'connected' && avatard.framesDrawn > 0",
                               timeout=WAIT_MS)
        yield page
    finally:
        context.close()
        assert not failures, failures


def wait(page: Page, expression: str, arg=None, timeout: float = WAIT_MS):
    return page.wait_for_function(expression, arg=arg, timeout=timeout).json_value()


def rtc_stats(page: Page) -> dict:
    return page.evaluate(RTC_STATS_JS)


def decoding(page: Page, seconds: float = 2.0) -> dict:
    """Frames decoded and audio packets received per second, over ``seconds``, measured in the page."""
    return page.evaluate("""async ([statsJs, seconds]) => {
      const stats = eval(statsJs);
      const a = await stats();
      await new Promise((r) => setTimeout(r, seconds * 1000));
      const b = await stats();
      const s = (b.t - a.t) / 1000;
      return { fps: (b.framesDecoded - a.framesDecoded) / s, audio_pps: (b.audioPackets - a.audioPackets) / s,
               lost: b.lost };
    }""", [RTC_STATS_JS, seconds])


def client_status(daemon, client_id: str) -> dict:
    return next(c for c in daemon.status()["client_list"] if c["id"] == client_id)


def test_the_page_picks_webrtc_decodes_25_fps_plays_audio_and_the_microphone_reaches_the_brain(daemon, net, browsers,
                                                                                               state):
    with open_page(browsers[0], net, 0) as page:
        assert page.evaluate("window.isSecureContext") is True, "https on a LAN name: a secure context"
        wait(page, "avatard.transport === 'webrtc'")
        assert page.evaluate("avatard.transportChoice.reason") == "default"
        rate = decoding(page)
        assert 20 <= rate["fps"] <= 30, rate  # the renderer's 25 fps, decoded by Chromium
        assert 40 <= rate["audio_pps"] <= 60, rate  # 20 ms Opus packets: 50 a second
        assert page.evaluate("document.getElementById('rtc-video').paused") is False
        client_id = page.evaluate("avatard.clientId")
        wait_status = time.monotonic() + 10
        while client_status(daemon, client_id).get("webrtc", {}).get("state") != "connected":
            assert time.monotonic() < wait_status, client_status(daemon, client_id)
            time.sleep(0.2)
        seen = client_status(daemon, client_id)
        assert seen["transport"] == "webrtc" and seen["frames_sent"] < 30  # the binary stream stopped

        energy_before = rtc_stats(page)["audioEnergy"]
        page.click("#talk")
        wait(page, "avatard.micActive")
        user = page.locator("#transcript .msg.user p").first
        expect(user).to_have_text(re.compile(r"^\[\d+\.\d s of speech\]$"), timeout=WAIT_MS)
        expect(page.locator("#transcript .msg.assistant p").first).to_have_text(
            re.compile(r"^\[echo of \d+\.\d s\]$"), timeout=WAIT_MS)
        # The echo is heard over WebRTC: the received audio's energy grows well beyond idle silence's.
        wait(page, f"(async () => ((await ({RTC_STATS_JS})())?.audioEnergy ?? 0) > {energy_before} + 0.01)()")
        mic = page.evaluate("({ chunks: avatard.micChunksSent })")
        assert mic["chunks"] == 0, "the microphone went over WebRTC, not as binary WebSocket audio"
        assert rtc_stats(page)["micPackets"] > 25
        page.click("#talk")
        wait(page, "!avatard.micActive")
        stats = client_status(daemon, client_id)["webrtc"]
        assert stats["bitrate_kbps"] > 0 and stats["rtt_ms"] is not None, stats
        shown = daemon.ctl("status")
        assert re.search(rf"{client_id}\s+webrtc\s.*connected, [\d.]+ kbit/s, rtt [\d.]+ ms, lost \d+", shown.stdout), shown.stdout
    fetch = ("import ssl, sys, urllib.request; sys.stdout.write(urllib.request.urlopen(urllib.request.Request("
             f"'https://{net.clients[0].server_address}:{PORT}/metrics', headers={{'Authorization': 'Bearer {TOKEN}'}}),"
             f" context=ssl.create_default_context(cafile={str(state / self_signed.CERT_FILE)!r})).read().decode())")
    metrics = subprocess.run([sys.executable, "-c", fetch], capture_output=True, text=True,
                             preexec_fn=net.clients[0].enter).stdout
    assert "avatard_viewer_bitrate_bps" in metrics


def test_transport_ws_forces_the_binary_stream(daemon, net, browsers):
    with open_page(browsers[0], net, 0, "&transport=ws") as page:
        wait(page, "avatard.framesDrawn > 25 && avatard.audioChunksReceived > 25")
        assert page.evaluate("[avatard.transport, avatard.rtc, avatard.transportChoice.forced]") == ["ws", None, True]
        assert client_status(daemon, page.evaluate("avatard.clientId"))["transport"] == "websocket"


def test_several_viewers_and_one_that_loses_its_network_does_not_disturb_the_others(daemon, net, browsers, state):
    with open_page(browsers[0], net, 0) as a, open_page(browsers[0], net, 0, "&transport=ws") as ws_page, \
            open_page(browsers[1], net, 1) as b:
        for page in (a, b):
            wait(page, "avatard.transport === 'webrtc'")
        ids = [page.evaluate("avatard.clientId") for page in (a, ws_page, b)]
        # --max-clients 4: an aiortc viewer is the fourth, a fifth connection is refused (WebRTC viewers count).
        url = f"wss://{net.clients[0].server_address}:{PORT}/ws?token={TOKEN}"
        cafile = str(state / self_signed.CERT_FILE)
        viewer = subprocess.Popen(net.clients[0].prefix() + [sys.executable, str(VIEWER), url, "--cafile", cafile,
                                  "--seconds", "60", "--until-stdin-eof", "--pli-at", "2"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 15
        while daemon.status()["clients"] < 4:
            assert time.monotonic() < deadline and viewer.poll() is None, viewer.communicate()
            time.sleep(0.1)
        refused = subprocess.run(net.clients[0].prefix() + [sys.executable, str(VIEWER), url, "--cafile", cafile,
                                 "--seconds", "1"], capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0 and "1013" in refused.stderr, refused.stderr[-500:]
        # The viewer's keyframe request (RTCP PLI) reaches the daemon's shared encoder through aiortc. The viewer
        # runs until told (its stdin closed): a fixed run of 8 s once ended, on a loaded box, before the refused
        # fifth viewer's start-up was over and this loop had looked.
        deadline = time.monotonic() + 30
        while True:
            clients = daemon.status()["client_list"]
            if any(c.get("webrtc", {}).get("keyframe_requests") for c in clients):
                break
            assert time.monotonic() < deadline and viewer.poll() is None, (viewer.communicate(), clients)
            time.sleep(0.2)
        out, err = viewer.communicate(input="", timeout=30)
        (result,) = json.loads(out)
        assert result["video_frames"] > 25 and result["audio_samples"] > 0 and result["plis_sent"] == 1, err[-500:]

        net.clients[1].down()  # b's network is gone: its UDP goes nowhere, its WebSocket stalls
        control = daemon.control(timeout=30)
        try:
            assert control.request("subscribe", events=["client"])["ok"]
            control.events_until(lambda e: e.get("event") == "client" and e.get("action") == "left"
                                 and e.get("client_id") == ids[2], timeout=30)
        finally:
            control.close()
        # The others never noticed: still 25 fps, nothing lost, the WebSocket viewer still fed.
        rate = decoding(a)
        assert 20 <= rate["fps"] <= 30 and rate["lost"] == 0, rate
        drawn = ws_page.evaluate("avatard.framesDrawn")
        wait(ws_page, "(n) => avatard.framesDrawn > n + 25", drawn)
        left = {c["id"]: c for c in daemon.status()["client_list"]}
        assert ids[2] not in left and left[ids[0]]["transport"] == "webrtc", left
        net.clients[1].up()

        # a loses its network for longer than aiortc keeps packets to resend (128): when it is back, its picture
        # moves again (the next keyframe; Chromium here waits for the periodic one rather than sending a PLI).
        decoded = rtc_stats(a)["framesDecoded"]
        net.clients[0].down()
        time.sleep(3)  # the outage itself
        net.clients[0].up()
        wait(a, f"(async () => ((await ({RTC_STATS_JS})())?.framesDecoded ?? 0) > {decoded} + 50)()", timeout=30_000)


def test_without_aiortc_the_page_falls_back_to_the_binary_stream_by_itself(net, browsers, tmp_path):
    """What Python 3.10 gets (aiortc needs 3.11): a daemon whose ``import aiortc`` fails answers the offer with
    webrtc_unavailable, and the page stays on the WebSocket stream without being told to."""
    shadow = tmp_path / "shadow" / "aiortc"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("aiortc is not installed", name="aiortc")\n')
    env = {"PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])}
    short = Path(tempfile.mkdtemp(prefix="avw-", dir="/tmp"))
    daemon = start_daemon(short, "--server", "--host", "0.0.0.0", "--port", str(PORT + 1), "--token", TOKEN, env=env,
                          preexec_fn=net.server.enter)
    try:
        assert daemon.status()["webrtc"]["available"] is False
        with open_page(browsers[0], net, 0, port=PORT + 1) as page:
            state = wait(page, "avatard.rtcState && avatard.rtcState.startsWith('down') && "
                               "[avatard.transport, avatard.rtcState]")
            assert state[0] == "ws" and "webrtc_unavailable" in state[1], state
            drawn, chunks = page.evaluate("[avatard.framesDrawn, avatard.audioChunksReceived]")
            wait(page, "([n, m]) => avatard.framesDrawn > n + 25 && avatard.audioChunksReceived > m + 25", [drawn, chunks])
            assert client_status(daemon, page.evaluate("avatard.clientId"))["transport"] == "websocket"
    finally:
        daemon.stop()


def test_h264_is_an_option(net, browsers):
    short = Path(tempfile.mkdtemp(prefix="avw-", dir="/tmp"))
    daemon = start_daemon(short, "--server", "--host", "0.0.0.0", "--port", str(PORT + 2), "--token", TOKEN,
                          "--webrtc-codec", "h264", preexec_fn=net.server.enter)
    try:
        with open_page(browsers[0], net, 0, port=PORT + 2) as page:
            wait(page, "avatard.transport === 'webrtc'")
            rate = decoding(page)
            assert 20 <= rate["fps"] <= 30, rate
            codec = page.evaluate("""async () => {
              const stats = await avatard.rtc.pc.getStats();
              let codec = null;
              stats.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') codec = stats.get(s.codecId).mimeType; });
              return codec;
            }""")
            assert codec == "video/H264"
        assert daemon.status()["webrtc"]["encoder"]["codec"] == "h264"
    finally:
        daemon.stop()
