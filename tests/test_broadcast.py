"""The broadcast through the real Debian Janus, inside a network namespace of the test's own.

The Janus API bodies are checked synchronously; then the Broadcaster, fed by the real MediaEncoder on a
FanOut that a paced task fills with drawn frames at 25 fps, keeps a mountpoint on a real janus, and aiortc
viewers (in a client namespace) watch it through Janus.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio
from conftest import JANUS_ADMIN_KEY as ADMIN_KEY
from janus_server import entered
from test_media_encoder import FPS, make_frame

from avatard.broadcast.broadcaster import Broadcaster
from avatard.core.fanout import FanOut
from avatard.errors import JanusError
from avatard.media.encoder import MediaEncoder
from avatard.protocol import janus as api

MOUNTPOINT = 4242
WAIT = 20.0  # any one expected state: a Janus restart, a WebRTC connection


@pytest.fixture
def in_server_namespace(janus_net):
    """The test itself (trio, in this thread) runs where the daemon would: beside Janus."""
    with entered(janus_net.server):
        yield


def test_create_body_binds_to_one_address_with_keyframe_buffering():
    mountpoint = api.Mountpoint(id=7, video_codec="vp8", iface="198.18.0.1", secret="s3", pin="1234")
    body = mountpoint.create("key")
    assert body["admin_key"] == "key" and body["permanent"] is False and body["pin"] == "1234"
    assert [m["type"] for m in body["media"]] == ["audio", "video"]
    assert all(m["iface"] == "198.18.0.1" and m["port"] == 0 for m in body["media"])
    assert body["media"][1]["bufferkf"] is True and body["media"][1]["codec"] == "vp8"
    assert "admin_key" not in mountpoint.create(None) and "s3" not in repr(mountpoint)


def test_plugin_errors_are_raised_with_janus_code():
    reply = {"janus": "success", "plugindata": {"data": {"error_code": 455, "error": "No such mountpoint"}}}
    with pytest.raises(JanusError) as caught:
        api.plugin_data(reply)
    assert caught.value.code == api.NO_SUCH_MOUNTPOINT
    with pytest.raises(JanusError) as caught:
        api.parse_id({"janus": "error", "error": {"code": 458, "reason": "No such session"}})
    assert caught.value.code == api.NO_SUCH_SESSION


def test_secret_is_stable_for_a_key_and_random_without_one():
    assert api.mountpoint_secret("k", 1, "r1") == api.mountpoint_secret("k", 1, "r2") != api.mountpoint_secret("k", 2, "r")
    assert api.mountpoint_secret(None, 1, "r1") == "r1"


async def wait_for(predicate, what: str, timeout: float = WAIT) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def paced_frames(send: trio.MemorySendChannel) -> None:
    """The renderer's part: a frame every 1/FPS s on trio's clock."""
    start = trio.current_time()
    for index in range(1_000_000):
        await trio.sleep_until(start + index / FPS)
        await send.send(make_frame(index))


async def start_encoder(nursery: trio.Nursery, codec: str = "vp8") -> MediaEncoder:
    fanout = FanOut(lambda: 0)
    send, receive = trio.open_memory_channel(2)
    encoder = MediaEncoder(fanout, codec=codec)
    nursery.start_soon(fanout.run, receive)
    nursery.start_soon(paced_frames, send)
    await nursery.start(encoder.run, FPS)
    return encoder


class Keyframes:
    """Counts the encoder's keyframe requests (the broadcast asks for one per new mountpoint)."""

    def __init__(self, encoder: MediaEncoder) -> None:
        self.asked = 0
        original = encoder.request_keyframe

        def request_keyframe() -> None:
            self.asked += 1
            original()

        encoder.request_keyframe = request_keyframe


async def test_viewers_watch_through_janus_and_a_restart_recreates_the_mountpoint(janus, viewers, in_server_namespace):
    async with trio.open_nursery() as nursery:
        encoder = await start_encoder(nursery)
        keyframes = Keyframes(encoder)
        broadcaster = Broadcaster(encoder, (janus.url,), admin_key=ADMIN_KEY, mountpoint=MOUNTPOINT, pin=None)
        server = broadcaster.servers[0]
        await nursery.start(broadcaster.run)
        await wait_for(lambda: server.connected, "the mountpoint")
        # One for the broadcast's new video subscription (the encoder's rule), one for the new mountpoint.
        assert keyframes.asked == 2

        watching = await trio.to_thread.run_sync(viewers.add, janus.url, MOUNTPOINT, 3)
        await wait_for(lambda: all(v.counts.video_frames >= 50 and v.counts.audio_packets >= 50 for v in watching),
                       "frames at every viewer")
        await trio.to_thread.run_sync(viewers.remove, watching)

        janus.kill()
        await wait_for(lambda: not server.connected, "the keeper to notice Janus is gone")
        await trio.to_thread.run_sync(janus.start)
        await wait_for(lambda: server.connected, "the mountpoint on the restarted Janus")
        assert server.status()["recreations"] == 1 and keyframes.asked == 3
        again = await trio.to_thread.run_sync(viewers.add, janus.url, MOUNTPOINT, 1)
        await wait_for(lambda: again[0].counts.video_frames >= 25, "frames after the restart")
        status = server.status()
        assert status["packets_sent"] > 0 and status["mountpoint"] == MOUNTPOINT
        assert ADMIN_KEY not in repr(broadcaster.status())
        nursery.cancel_scope.cancel()
    assert ADMIN_KEY not in janus.log()


async def test_a_silent_janus_costs_the_other_server_nothing(janus, viewers, in_server_namespace):
    """One "Janus" accepts TCP and never answers (the kernel completes the handshakes of its backlog): its
    keeper waits out its HTTP timeout while the real server's viewers get every frame."""
    silent = trio.socket.socket()
    await silent.bind((janus.address, 0))
    silent.listen(8)
    silent_url = f"http://{janus.address}:{silent.getsockname()[1]}/janus"
    with silent:
        async with trio.open_nursery() as nursery:
            encoder = await start_encoder(nursery)
            broadcaster = Broadcaster(encoder, (silent_url, janus.url), admin_key=ADMIN_KEY, mountpoint=MOUNTPOINT,
                                      pin=None)
            stuck, good = broadcaster.servers
            await nursery.start(broadcaster.run)
            await wait_for(lambda: good.connected, "the mountpoint on the real Janus")
            watching = await trio.to_thread.run_sync(viewers.add, janus.url, MOUNTPOINT, 1)
            await wait_for(lambda: watching[0].counts.video_frames >= 50, "frames through the real Janus")
            await wait_for(lambda: stuck.last_error is not None, "the silent one's timeout")
            assert "Timeout" in stuck.last_error and not stuck.connected
            assert stuck.packets_sent == 0 and stuck.packets_dropped > 0 and good.packets_dropped < good.packets_sent
            nursery.cancel_scope.cancel()


async def test_a_restarted_avatard_takes_over_its_mountpoint(janus, in_server_namespace):
    """The secret is derived from the admin key, so a new avatard finds the mountpoint the last one made."""
    ports = []
    for _ in range(2):
        async with trio.open_nursery() as nursery:
            encoder = await start_encoder(nursery)
            broadcaster = Broadcaster(encoder, (janus.url,), admin_key=ADMIN_KEY, mountpoint=MOUNTPOINT, pin=None)
            server = broadcaster.servers[0]
            await nursery.start(broadcaster.run)
            await wait_for(lambda: server.connected, "the mountpoint")
            ports.append(server._target[1])
            assert server.status()["recreations"] == 0
            nursery.cancel_scope.cancel()
    assert ports[0] == ports[1]
    assert janus.log().count("audio listener restricted to interface address") == 1, "created once"


async def test_h264_reaches_a_viewer(janus, viewers, in_server_namespace):
    async with trio.open_nursery() as nursery:
        encoder = await start_encoder(nursery, codec="h264")
        broadcaster = Broadcaster(encoder, (janus.url,), admin_key=ADMIN_KEY, mountpoint=MOUNTPOINT, pin="8080")
        await nursery.start(broadcaster.run)
        await wait_for(lambda: broadcaster.servers[0].connected, "the mountpoint")
        watching = await trio.to_thread.run_sync(lambda: viewers.add(janus.url, MOUNTPOINT, 1, pin="8080"))
        await wait_for(lambda: watching[0].counts.video_frames >= 25 and watching[0].counts.audio_packets >= 25,
                       "H.264 frames and audio at the viewer")
        assert "H264/90000" in watching[0].pc.remoteDescription.sdp
        nursery.cancel_scope.cancel()


async def test_a_mountpoint_that_is_not_ours_is_left_alone_and_reported(janus, in_server_namespace):
    session = janus.request("", {"janus": "create", "transaction": "t1"})["data"]["id"]
    handle = janus.request(f"/{session}", {"janus": "attach", "plugin": api.STREAMING_PLUGIN, "transaction": "t2"})["data"]["id"]
    theirs = api.Mountpoint(id=MOUNTPOINT, video_codec="vp8", iface=janus.address, secret="someone-elses")
    created = janus.request(f"/{session}/{handle}", {"janus": "message", "transaction": "t3", "body": theirs.create(ADMIN_KEY)})
    api.parse_created(api.plugin_data(created))
    async with trio.open_nursery() as nursery:
        encoder = await start_encoder(nursery)
        broadcaster = Broadcaster(encoder, (janus.url,), admin_key=ADMIN_KEY, mountpoint=MOUNTPOINT, pin=None)
        server = broadcaster.servers[0]
        await nursery.start(broadcaster.run)
        await wait_for(lambda: server.last_error is not None, "an error")
        assert "secret that is not ours" in server.last_error and not server.connected
        nursery.cancel_scope.cancel()
    info = janus.request(f"/{session}/{handle}", {"janus": "message", "transaction": "t4", "body": theirs.info()})
    assert api.parse_info(api.plugin_data(info)), "the other mountpoint is still there, untouched"


async def test_wrong_admin_key_is_reported_without_the_key(janus, in_server_namespace):
    async with trio.open_nursery() as nursery:
        encoder = await start_encoder(nursery)
        broadcaster = Broadcaster(encoder, (janus.url,), admin_key="wrong-key-zzz", mountpoint=MOUNTPOINT, pin=None)
        server = broadcaster.servers[0]
        await nursery.start(broadcaster.run)
        await wait_for(lambda: server.last_error is not None, "an error")
        assert "457" in server.last_error and "wrong-key-zzz" not in server.last_error
        assert not server.connected
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("args, message", [
    (("--janus", "ftp://janus.example/janus"), "--janus: 'ftp://janus.example/janus' is not an http(s) URL"),
    (("--janus", "http://0.0.0.0:8088/janus"), "name the Janus machine's own address, not 0.0.0.0"),
    (("--janus", "http://198.18.0.1:8088/janus", "--janus", "http://198.18.0.1:8088/janus"), "the same server is given twice"),
    (("--janus", "http://198.18.0.1:8088/janus", "--janus-mountpoint", "0"), "--janus-mountpoint: 0 is not in 1.."),
    (("--janus", "http://198.18.0.1:8088/janus", "--janus-video-codec", "av1"), "'av1' is not one of 'vp8', 'h264'"),
])
def test_bad_janus_flags_exit_2_with_one_line(args, message, tmp):
    result = subprocess.run([sys.executable, "-m", "avatard", "--server", "--host", "127.0.0.1", *args,
                             "--janus-admin-key", ADMIN_KEY], capture_output=True, text=True, cwd=tmp, timeout=60,
                            env={k: v for k, v in os.environ.items() if not k.startswith("AVATARD_")})
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert ADMIN_KEY not in result.stderr


def test_help_names_the_janus_flags_and_never_the_key(tmp):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AVATARD_")},
           "AVATARD_JANUS_ADMIN_KEY": ADMIN_KEY, "AVATARD_JANUS_PIN": "97531"}
    help_text = subprocess.run([sys.executable, "-m", "avatard", "--help"], capture_output=True, text=True, env=env,
                               cwd=tmp, timeout=60).stdout
    for flag in ("--janus ", "--janus-admin-key", "--janus-mountpoint", "--janus-video-codec", "--janus-pin",
                 "AVATARD_JANUS_ADMIN_KEY"):
        assert flag in help_text
    assert ADMIN_KEY not in help_text and "97531" not in help_text


@pytest.mark.parametrize("webrtc, janus_codec, expected", [("vp8", "vp8", ["vp8"]), ("vp8", "h264", ["vp8", "h264"])])
def test_one_encoder_per_codec_shared_by_webrtc_and_the_broadcast(webrtc, janus_codec, expected):
    from avatard.app import make_broadcast, make_encoders
    from avatard.config import Config
    config = Config(server=True, host="127.0.0.1", webrtc_codec=webrtc, janus=("http://198.18.1.1:8088/janus",),
                    janus_video_codec=janus_codec, janus_admin_key=ADMIN_KEY)
    encoders = make_encoders(config, FanOut(lambda: 0))
    assert list(encoders) == expected
    assert make_broadcast(config, encoders).encoder is encoders[janus_codec]
