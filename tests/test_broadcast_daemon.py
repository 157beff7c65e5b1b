"""The daemon broadcasting through the real Debian Janus: /watch in a real Chromium, aiortc viewers, a Janus
restart in mid-stream, and the admin key kept out of every log and status.

Network (tests/netns.py): avatard and janus run in the server namespace, Janus's HTTP API and RTP input on
198.18.1.1 (the server end of client 1's link; ICE gathers on the server's veths only); Chromium and the
aiortc viewers run in client 1's namespace, 198.18.1.2. The page is served by avatard at /watch and told
where Janus is with ``?janus=``.

Playwright's sync API runs its own event loop, so these tests are plain sync functions (trio_mode leaves
them alone).
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from conftest import JANUS_ADMIN_KEY as ADMIN_KEY
from conftest import start_daemon, wait_until
from janus_server import entered
from playwright.sync_api import sync_playwright
from test_browser import CHROMIUM, CHROMIUM_ARGS

PIN = "viewer-pin-x7q"
MOUNTPOINT = 5151
WAIT = 30.0  # any one expected state: a WebRTC connection, a Janus restart noticed (backoff <= 10 s)

STATS_JS = """async () => {
  if (!window.pc) return null;
  const out = { state: window.pc.connectionState, video: null, audio: null };
  for (const s of (await window.pc.getStats()).values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'video')
      out.video = { framesDecoded: s.framesDecoded || 0, fps: s.framesPerSecond || 0 };
    if (s.type === 'inbound-rtp' && s.kind === 'audio')
      out.audio = { packetsReceived: s.packetsReceived || 0 };
  }
  return out;
}"""


@pytest.fixture
def broadcasting(janus_net, janus, tmp):
    """avatard in the server namespace, broadcasting to ``janus``; the admin key comes from the environment."""
    daemon = start_daemon(tmp, "--server", "--host", janus_net.clients[0].server_address, "--port", "0", "--no-auth",
                          "--janus", janus.url, "--janus-mountpoint", str(MOUNTPOINT), "--janus-pin", PIN,
                          env={"AVATARD_JANUS_ADMIN_KEY": ADMIN_KEY}, preexec_fn=janus_net.server.enter)
    try:
        wait_until(lambda: daemon.status()["janus"][0]["connected"], WAIT, "the mountpoint on Janus", interval=0.2)
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)


def assert_no_admin_key(daemon, janus) -> None:
    status = daemon.ctl("status")
    as_json = daemon.ctl("status", "--json")
    assert status.returncode == 0 and "janus:" in status.stdout and "re-creations" in status.stdout
    for text in (status.stdout, as_json.stdout, daemon.log(), janus.log()):
        assert ADMIN_KEY not in text and PIN not in text


def test_chromium_watches_the_broadcast_and_comes_back_after_janus_restarts(janus_net, janus, broadcasting, tmp):
    port = broadcasting.port
    client = janus_net.clients[0]
    home = Path(tempfile.mkdtemp(prefix="chromium-home-", dir=tmp))
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache")}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=client.wrap(CHROMIUM, tmp), env=env, args=[
            *CHROMIUM_ARGS,
            # Chromium would hide its host candidates behind mDNS names, which nothing here resolves.
            "--disable-features=WebRtcHideLocalIpsWithMdns",
        ])
        try:
            page = browser.new_page()
            page.goto(f"http://{client.server_address}:{port}/watch?janus={janus.url}&mountpoint={MOUNTPOINT}&pin={PIN}")

            def playing(frames: int):
                stats = page.evaluate(STATS_JS)
                if not stats or not stats["video"] or not stats["audio"]:
                    return None
                ok = stats["video"]["framesDecoded"] >= frames and stats["audio"]["packetsReceived"] >= 2 * frames
                return stats if ok else None

            stats = wait_until(lambda: playing(75), WAIT, "3 s of decoded video and audio in Chromium", interval=0.2)
            assert stats["state"] == "connected"
            assert stats["video"]["fps"] >= 20, stats  # Chromium's own measure; the bench has the exact figure

            # Transcripts come from avatard's WebSocket, beside the broadcast.
            assert broadcasting.ctl("say", "Hello to everybody watching").returncode == 0
            page.wait_for_function("document.getElementById('transcript').textContent.includes('everybody watching')",
                                   timeout=WAIT * 1000)

            # Janus crashes and comes back: avatard re-creates the mountpoint, the page watches again by itself.
            page.evaluate("() => { window.pcBefore = window.pc; }")
            janus.kill()
            wait_until(lambda: not broadcasting.status()["janus"][0]["connected"], WAIT, "avatard to notice Janus is gone", interval=0.2)
            janus.start()
            wait_until(lambda: broadcasting.status()["janus"][0]["connected"], WAIT, "the mountpoint re-created", interval=0.2)
            assert broadcasting.status()["janus"][0]["recreations"] == 1
            wait_until(lambda: page.evaluate("() => window.pc !== window.pcBefore"), WAIT, "the page's new connection", interval=0.2)
            stats = wait_until(lambda: playing(50), WAIT, "video and audio again after the restart", interval=0.2)
            assert stats["state"] == "connected"
        finally:
            browser.close()
    assert_no_admin_key(broadcasting, janus)


def test_twenty_aiortc_viewers_each_get_the_frame_rate(janus_net, janus, broadcasting, viewers):
    watching = viewers.add(janus.url, MOUNTPOINT, 20, pin=PIN)
    wait_until(lambda: all(v.counts.video_frames >= 100 for v in watching), 60, "4 s of frames at every viewer", interval=0.2)
    now = time.monotonic()
    rates = [v.counts.fps(now - 3.0, now) for v in watching]
    assert min(rates) >= 20, rates  # ~25; the bench measures it exactly on a quiet machine
    assert all(v.counts.audio_packets >= 150 for v in watching)
    status = broadcasting.status()
    assert status["janus"][0]["packets_dropped"] == 0 or status["janus"][0]["packets_sent"] > 0
    assert status["broadcast_encoder"]["subscribers"] == 2  # one video and one audio subscription, for 20 viewers
    assert [sub["kind"] for sub in status["broadcast_subscriptions"]] == ["video", "audio"]
    assert all(sub["delivered"] > 0 for sub in status["broadcast_subscriptions"])
    with entered(janus_net.server):
        metrics = httpx.get(f"http://{janus_net.clients[0].server_address}:{broadcasting.port}/metrics", timeout=10).text
    assert 'avatard_janus_connected{server="janus_1",url="%s"} 1.0' % janus.url in metrics
    assert 'avatard_janus_mountpoint{server="janus_1",url="%s"} %d.0' % (janus.url, MOUNTPOINT) in metrics
    assert "avatard_janus_packets_sent_total" in metrics and "avatard_janus_recreations_total" in metrics
    assert_no_admin_key(broadcasting, janus)


def test_a_viewer_without_the_pin_is_refused(janus, broadcasting, viewers):
    with pytest.raises(RuntimeError, match=r"Missing mandatory element \(pin\)"):
        viewers.add(janus.url, MOUNTPOINT, 1)
    with pytest.raises(RuntimeError, match="Unauthorized"):
        viewers.add(janus.url, MOUNTPOINT, 1, pin="1357")
