"""The avatar can see: --camera on a video file, avatarctl look / camera, presence and greetings, both brains.

Real daemons (subprocesses), the real google-genai client against the Live test server, and video files made here
from a real photo shipped by scikit-image (``skimage.data.astronaut()``: Eileen Collins, NASA, public domain).
"""

import base64
import json
import os
import time
import urllib.request

import cv2
import numpy as np
import pytest
import trio
from gemini_live_server import GeminiLiveTestServer
from skimage import data as skdata
from wsclient import Client, open_client

from avatard.constants import MAX_IMAGE_BYTES
from avatard.core.faces import FaceDetector
from avatard.core.hub import GREET_PROMPT
from avatard.core.presence import ARRIVE_SAMPLES, LEAVE_SECONDS, Presence
from avatard.errors import ProtocolError
from avatard.protocol import control as proto
from avatard.protocol import media as wire

GEMINI_ENV = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
FILE_FPS = 10
SIZE = (640, 480)


def face_picture() -> np.ndarray:
    """The astronaut's portrait on a plain wall, 640x480 BGR."""
    frame = empty_picture()
    face = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)[:300, 100:400]
    frame[90:390, 170:470] = face
    return frame


def empty_picture() -> np.ndarray:
    """An empty scene: a wall with a door frame (edges, but no face)."""
    frame = np.full((SIZE[1], SIZE[0], 3), 150, np.uint8)
    cv2.rectangle(frame, (60, 40), (200, 460), (90, 70, 60), 8)
    return frame


def write_video(path, scenes: list[tuple[str, float]]) -> str:
    """A video file of ``scenes`` ("face"/"empty", seconds) at FILE_FPS (MJPG in AVI: OpenCV writes it everywhere)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FILE_FPS, SIZE)
    assert writer.isOpened()
    pictures = {"face": face_picture(), "empty": empty_picture()}
    for scene, seconds in scenes:
        for _ in range(int(seconds * FILE_FPS)):
            writer.write(pictures[scene])
    writer.release()
    return str(path)


# -- units: the detector, the presence rules, the control protocol -------------------------------------------------

def test_the_detector_finds_the_real_face_and_nothing_in_an_empty_scene():
    cascade = FaceDetector.load()
    faces = cascade.detect(face_picture())
    assert len(faces) == 1
    x, y, w, h = faces[0]
    assert 170 <= x and x + w <= 470 and 90 <= y and y + h <= 390  # on the portrait
    assert cascade.detect(empty_picture()) == []
    noise = np.random.default_rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert cascade.detect(noise) == []


def test_presence_needs_a_steady_face_and_a_real_absence_and_greets_after_an_empty_scene():
    presence = Presence(greet_after=30)
    t = 0.0
    changes = []

    def feed(faces, seconds, step=0.5):
        nonlocal t
        for _ in range(int(seconds / step)):
            t += step
            change = presence.update(faces, t)
            if change is not None:
                changes.append((change.kind, change.greet))

    feed(1, 0.5)  # one picture with a face: not yet an arrival
    assert changes == [] and ARRIVE_SAMPLES > 1
    feed(1, 5)
    feed(0, 1)  # a short miss is not a departure
    feed(1, 2)
    assert changes == [("arrived", True)]
    feed(0, LEAVE_SECONDS + 1)
    feed(1, 2)  # back after 4 s: arrived again, not greeted again
    assert changes == [("arrived", True), ("left", False), ("arrived", False)]
    feed(0, 40)
    feed(2, 2)  # the scene was empty for 30 s: greeted
    assert changes[-2:] == [("left", False), ("arrived", True)]


def test_control_look_and_camera_requests_are_checked():
    jpeg = cv2.imencode(".jpg", face_picture())[1].tobytes()
    request = proto.parse_request(proto.request("look", image=base64.b64encode(jpeg).decode())[:-1])
    assert request.image == jpeg
    assert proto.parse_request(b'{"cmd": "camera", "state": "off"}').state == "off"
    for line, code in ((b'{"cmd": "camera", "state": "maybe"}', "bad_request"),
                       (b'{"cmd": "look", "image": "not base64!"}', "bad_request"),
                       (b'{"cmd": "look", "image": ""}', "bad_request"),
                       (proto.request("look", image=base64.b64encode(bytes(800 * 1024)).decode())[:-1], "too_large")):
        with pytest.raises(ProtocolError) as caught:
            proto.parse_request(line)
        assert caught.value.code == code


# -- end to end --------------------------------------------------------------------------------------------------

def test_a_camera_that_cannot_be_opened_is_one_line_and_exit_2(daemon_factory, tmp):
    not_video = tmp / "notes.txt"
    not_video.write_text("not a video")
    for camera in (str(not_video), "9"):
        daemon = daemon_factory("--camera", camera, wait_ready=False)
        assert daemon.proc.wait(20) == 2
        lines = daemon.log().strip().splitlines()
        assert lines == [f"avatard: error: --camera: cannot open camera {camera!r} (is it plugged in, and may this "
                         f"user open it? see `v4l2-ctl --list-devices`)"]


def test_presence_with_the_offline_brain_greets_once_per_empty_scene(daemon_factory, tmp):
    video = write_video(tmp / "visit.avi", [("empty", 1), ("face", 4), ("empty", 5), ("face", 4), ("empty", 5)])
    daemon = daemon_factory("--camera", video, "--greet", "Hello there, welcome!")
    events = daemon.control(timeout=30)
    assert events.request("subscribe", events=["presence", "transcription", "gesture"])["ok"]
    def left(event):
        return event["event"] == "presence" and event["presence"] == "left"
    seen = events.events_until(left, timeout=20) + events.events_until(left, timeout=20)
    presence = [(e["presence"], e.get("greet")) for e in seen if e["event"] == "presence" and e["presence"] != "faces"]
    assert presence == [("arrived", True), ("left", None), ("arrived", False), ("left", None)]
    spoken = [e["text"] for e in seen if e["event"] == "transcription" and e["role"] == "assistant"]
    assert spoken == ["Hello there, welcome!"]
    # The greeting's wave (the offline brain's keyword gestures may wave at "hello" too).
    assert [e["gesture"] for e in seen if e["event"] == "gesture" and e["source"] == "presence"] == ["mini_wave_hello"]
    status = daemon.status()
    assert status["presence"]["arrivals"] == 2 and status["presence"]["departures"] == 2
    assert status["camera_frames_sent"] == 0  # the offline brain is sent no pictures
    # The offline brain cannot see: a still is refused with a reason.
    still = tmp / "still.jpg"
    cv2.imwrite(str(still), face_picture())
    refused = daemon.ctl("look", str(still))
    assert refused.returncode == 1 and "cannot see" in refused.stderr
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics").read().decode()
    assert "avatard_presence_arrivals_total 2.0" in metrics


def test_frames_reach_gemini_as_jpeg_at_most_once_a_second_and_stop_when_the_camera_is_off(daemon_factory, tmp):
    video = write_video(tmp / "desk.avi", [("face", 30)])
    with GeminiLiveTestServer() as server:
        daemon = daemon_factory("--gemini-api-key", "test-key", "--gemini-base-url", server.base_url,
                                "--gemini-ca-file", server.ca_path, "--camera", video, env=GEMINI_ENV)
        server.wait_for(lambda: len(server.video_frames) >= 4, timeout=15)
        off = daemon.ctl("camera", "off")
        assert off.returncode == 0 and off.stdout.strip() == "camera off"
        stopped = len(server.video_frames)
        frames = server.video_frames
        for frame in frames:
            assert frame.mime_type == "image/jpeg" and frame.data[:3] == b"\xff\xd8\xff"
            picture = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR)
            assert picture is not None and max(picture.shape[:2]) <= 768
        gaps = [b.at - a.at for a, b in zip(frames, frames[1:])]
        assert min(gaps) >= 0.9, gaps  # <= 1 per second (a little jitter on the way)
        setup = server.setups[0]
        assert "You can see" in json.dumps(setup)
        status = daemon.status()
        assert status["camera"] == "off" and not status["camera_to_model"]
        # Off: nothing more arrives (one frame may have been on its way when the request came).
        time.sleep(3)
        assert len(server.video_frames) <= stopped + 1
        # An operator's still goes through even with the camera off.
        still = tmp / "label.jpg"  # bigger than 768 px: the daemon scales it
        cv2.imwrite(str(still), cv2.resize(face_picture(), (1600, 1200)))
        before = len(server.video_frames)
        assert daemon.ctl("look", str(still)).returncode == 0
        server.wait_for(lambda: len(server.video_frames) > before, timeout=5)
        last = cv2.imdecode(np.frombuffer(server.video_frames[-1].data, np.uint8), cv2.IMREAD_COLOR)
        assert last.shape[:2] == (576, 768)  # scaled to 768 px on the long side
        # On again: frames flow again.
        assert daemon.ctl("camera", "on").returncode == 0
        count = len(server.video_frames)
        server.wait_for(lambda: len(server.video_frames) >= count + 2, timeout=10)


def test_greet_model_turns_an_arrival_into_a_model_turn_and_the_avatar_speaks_the_answer(daemon_factory, tmp):
    video = write_video(tmp / "visitor.avi", [("empty", 3), ("face", 30)])
    welcome = "Welcome, astronaut! What brings you here?"
    with GeminiLiveTestServer(reply=lambda text: welcome if text == GREET_PROMPT else f"You said: {text}") as server:
        daemon = daemon_factory("--gemini-api-key", "test-key", "--gemini-base-url", server.base_url,
                                "--gemini-ca-file", server.ca_path, "--camera", video, "--greet", "model",
                                env=GEMINI_ENV)
        events = daemon.control(timeout=30)
        assert events.request("subscribe", events=["presence", "transcription"])["ok"]
        seen = events.events_until(lambda e: e["event"] == "transcription" and e["role"] == "assistant"
                                   and e["is_final"], timeout=30)
        assert [(e["presence"], e["greet"]) for e in seen if e["event"] == "presence"
                and e["presence"] == "arrived"] == [("arrived", True)]
        assert seen[-1]["text"] == welcome  # the avatar speaks the model's own greeting
        (conversation,) = server.conversations.values()
        assert conversation[0] == {"role": "user", "text": GREET_PROMPT, "session": conversation[0]["session"]}
        assert conversation[1]["role"] == "model" and conversation[1]["text"] == welcome
        # Someone who stays is not greeted again.
        time.sleep(3)
        assert len(server.conversations[next(iter(server.conversations))]) == 2


def test_camera_frame_messages_are_size_checked():
    jpeg = cv2.imencode(".jpg", face_picture())[1].tobytes()
    message = wire.parse_client_text(json.dumps({"type": "camera_frame", "data": {"jpeg": base64.b64encode(jpeg).decode()}}))
    assert message == wire.CameraInput(jpeg)
    png = cv2.imencode(".png", face_picture())[1].tobytes()
    for data, code in (({}, "bad_image"), ({"jpeg": 5}, "bad_image"), ({"jpeg": "%%%"}, "bad_image"),
                       ({"jpeg": base64.b64encode(png).decode()}, "bad_image"),
                       ({"jpeg": "A" * (MAX_IMAGE_BYTES * 2)}, "too_large")):
        with pytest.raises(ProtocolError) as caught:
            wire.parse_client_text(json.dumps({"type": "camera_frame", "data": data}))
        assert caught.value.code == code


async def test_browser_camera_frames_drive_presence_and_bad_ones_get_an_error_reply(daemon_factory):
    daemon = daemon_factory("--greet", "Hi!")
    jpeg = base64.b64encode(cv2.imencode(".jpg", face_picture())[1].tobytes()).decode()
    async with open_client(daemon.port) as ws:
        client = Client(ws)
        broken = base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(300)).decode()  # a JPEG's start, then nothing
        await client.send_json({"type": "camera_frame", "data": {"jpeg": broken}})
        error = await client.json_of("error")
        assert error["data"]["code"] == "refused" and "decode" in error["data"]["message"]
        await client.send_json({"type": "camera_frame", "data": {"jpeg": "A" * (MAX_IMAGE_BYTES * 4 // 3 + 8)}})
        assert (await client.json_of("error"))["data"]["code"] == "too_large"
        for _ in range(4):  # the page's pace: at most 1 a second
            await client.send_json({"type": "camera_frame", "data": {"jpeg": jpeg}})
            await trio.sleep(0.6)
        await client.json_of("transcription", role="assistant", text="Hi!")
    status = daemon.status()
    assert status["presence"]["arrivals"] == 1 and status["presence"]["present"]


# OpenCV as 5.0 ships it: no CascadeClassifier, no cv2.data (loaded before avatard through sitecustomize).
OPENCV_WITHOUT_CASCADES = """import cv2
del cv2.CascadeClassifier
del cv2.data
"""


async def test_without_a_face_detector_the_daemon_runs_and_browser_frames_get_an_error_reply(daemon_factory, tmp):
    shim = tmp / "opencv5"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(OPENCV_WITHOUT_CASCADES)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, (str(shim), os.environ.get("PYTHONPATH"))))}
    # Asked to greet, it cannot: one line, exit 2, naming the flag.
    greeter = daemon_factory("--greet", "Hi!", env=env, wait_ready=False)
    assert greeter.proc.wait(20) == 2
    assert greeter.log().startswith("avatard: error: --greet: greeting needs face detection, and OpenCV")
    # The embedded default (server mode, no camera) starts and says why presence is off.
    daemon = daemon_factory(env=env)
    assert "presence detection is off: OpenCV" in daemon.log()
    assert "no CascadeClassifier" in daemon.status()["presence_unavailable"]
    jpeg = base64.b64encode(cv2.imencode(".jpg", face_picture())[1].tobytes()).decode()
    async with open_client(daemon.port) as ws:
        client = Client(ws)
        await client.send_json({"type": "camera_frame", "data": {"jpeg": jpeg}})
        error = await client.json_of("error")
        assert error["data"]["code"] == "refused"
        assert "cannot see pictures and presence detection is unavailable" in error["data"]["message"]
        # The rest keeps working.
        await client.send_json({"type": "text_input", "data": {"text": "Hello there"}})
        await client.json_of("transcription", role="assistant")
    assert daemon.proc.poll() is None


def test_a_camera_that_stops_is_reported_and_retried(daemon_factory, tmp):
    video = write_video(tmp / "short.avi", [("empty", 1)])  # its end is a camera that stops delivering
    daemon = daemon_factory("--camera", video)
    events = daemon.control(timeout=15)
    assert events.request("subscribe", events=["status"])["ok"]
    lost = events.events_until(lambda e: e.get("status") == "camera_lost", timeout=10)[-1]
    assert lost["retry_s"] > 0 and lost["reason"]
    events.events_until(lambda e: e.get("status") in ("camera_on", "camera_sending"), timeout=10)
    assert daemon.proc.poll() is None
    assert daemon.status()["local_io"]["camera"]["reopens"] >= 1
