"""The browser page against the real daemon, in a real headless Chromium.

Chromium gets a fake microphone that loops a WAV of synthesized speech, so the Talk button sends
real captured audio through getUserMedia and mic-worklet.js. The page is loaded from 127.0.0.1, a
secure context, so playback goes through player-worklet.js as it does for a person.

An init script (``RECORDER_JS``) records, without changing the page's behaviour, every JSON message
and the peak of every audio chunk the page's WebSocket receives, plus the player worklet's stats
reports. Statuses such as ``interrupted`` last a moment before the next one replaces
``window.avatard.lastStatus``; the record keeps them, in the order the page saw them.

The tests are plain sync functions (playwright.sync_api runs its own event loop; trio_mode leaves
sync tests alone). Chromium is required: without it these tests fail, they do not skip.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import MIC_PAUSE_S, MIC_PHRASE
from gemini_live_server import GeminiLiveTestServer
from playwright.sync_api import Browser, Page, expect, sync_playwright
from skimage import data as skdata

from avatard.brains import tts

CHROMIUM = "/usr/bin/chromium"
# What every test Chromium gets: no sandbox (we run as root), no GPU, media that plays without a gesture,
# and none of its background traffic (this machine's closed network refuses it, many connections at a time).
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync")
SERVER = ("--server", "--host", "127.0.0.1", "--port", "0")
RATE = 16000

WAIT_MS = 10_000  # any single expected event; the daemon answers within a second or two
LOUD = 1000  # PCM16 peak above which a chunk is speech rather than idle silence (which is exact zeros)
GEMINI_ENV = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}  # the Live test server

RECORDER_JS = """
(() => {
  const rec = window.__rec = { events: [], stats: [] };
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (ev) => {
        const t = performance.now();
        if (typeof ev.data === 'string') {
          try {
            const m = JSON.parse(ev.data);
            rec.events.push({ t, type: m.type, data: m.data });
          } catch {}
        } else if (ev.data instanceof ArrayBuffer && ev.data.byteLength >= 18 &&
                   new DataView(ev.data).getUint8(0) === 0x02) {
          const view = new DataView(ev.data, 18);
          let peak = 0;
          for (let off = 0; off + 1 < view.byteLength; off += 2) {
            peak = Math.max(peak, Math.abs(view.getInt16(off, true)));
          }
          rec.events.push({ t, type: 'audio', peak });
        }
      });
    }
  };
  const NativeNode = window.AudioWorkletNode;
  if (NativeNode) {
    window.AudioWorkletNode = class extends NativeNode {
      constructor(ctx, name, options) {
        super(ctx, name, options);
        if (name !== 'avatard-player') return;
        this.port.addEventListener('message', (e) => {
          if (e.data && e.data.type === 'stats') rec.stats.push({ t: performance.now(), ...e.data });
        });
      }
    };
  }
  rec.statuses = () => rec.events.filter((e) => e.type === 'status').map((e) => e.data.status);
  rec.audioAfter = (t) => rec.events.filter((e) => e.type === 'audio' && e.t > t);
  rec.statusTime = (status) => rec.events.find((e) => e.type === 'status' && e.data.status === status)?.t;
})();
"""


@pytest.fixture(scope="module")
def camera_y4m(tmp_path_factory) -> Path:
    """The fake camera: a real face (``skimage.data.astronaut()``, public domain), 10 s of Y4M. Chromium loops it."""
    picture = cv2.resize(cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR), (640, 480))
    planes = cv2.cvtColor(picture, cv2.COLOR_BGR2YUV_I420).tobytes()  # Y, then U, then V: Y4M's 4:2:0 layout
    path = tmp_path_factory.mktemp("camera") / "camera.y4m"
    with open(path, "wb") as out:
        out.write(b"YUV4MPEG2 W640 H480 F10:1 Ip A1:1 C420jpeg\n")
        for _ in range(100):
            out.write(b"FRAME\n" + planes)
    return path


@pytest.fixture(scope="module")
def browser(mic_wav, camera_y4m, tmp_path_factory) -> Browser:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing or not executable: the browser tests need Debian's chromium "
                    "(apt-get install chromium)", pytrace=False)
    home = tmp_path_factory.mktemp("chromium-home")
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache")}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, env=env, args=[
            *CHROMIUM_ARGS,
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic_wav}",
            f"--use-file-for-fake-video-capture={camera_y4m}",
        ])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, daemon_factory):
    """The page served by a fresh daemon, connected, with sound running and the first frame drawn."""
    with open_page(browser, daemon_factory(*SERVER)) as page:
        yield page


@contextlib.contextmanager
def open_page(browser: Browser, daemon):
    """``daemon``'s page, connected, with sound running and the first frame drawn; no page errors by the end."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(RECORDER_JS)
    page = context.new_page()
    failures: list[str] = []
    page.on("pageerror", lambda exc: failures.append(f"uncaught: {exc}"))
    page.on("console", lambda m: failures.append(f"console.error: {m.text}") if m.type == "error" else None)
    page.goto(f"http://127.0.0.1:{daemon.port}/")
    page.wait_for_function("avatard.connection === 'connected' && avatard.framesDrawn > 0"
                           " && avatard.audioContextState === 'running' && avatard.playerReady", timeout=WAIT_MS)
    yield page
    context.close()
    assert not failures, failures
    assert daemon.proc.poll() is None, daemon.log()


def state(page: Page, *fields: str) -> dict:
    return page.evaluate(f"({{{', '.join(f'{f}: avatard.{f}' for f in fields)}}})")


def wait(page: Page, expression: str, arg=None, timeout: float = WAIT_MS):
    """Poll ``expression`` (a function of ``arg`` when one is given) in the page until truthy; return it."""
    return page.wait_for_function(expression, arg=arg, timeout=timeout).json_value()


def canvas_pixels(page: Page) -> np.ndarray:
    """What the video canvas holds now, as a BGR image."""
    url = page.evaluate("document.getElementById('video').toDataURL('image/png')")
    png = base64.b64decode(url.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


def is_picture(image: np.ndarray, colours: int) -> bool:
    return image.std() > 10 and len(np.unique(image.reshape(-1, 3), axis=0)) > colours


def test_connects_and_streams_video_and_sound(page):
    expect(page.locator("#conn .label")).to_have_text(re.compile(r"^Connected · client_\d+$"))
    assert page.evaluate("avatard.transcript.length") == 0
    assert state(page, "frameWidth", "frameHeight") == {"frameWidth": 512, "frameHeight": 512}
    first = canvas_pixels(page)
    assert first.shape == (512, 512, 3) and is_picture(first, 50), "the canvas shows a picture"

    # Two seconds of the idle stream, measured inside the page.
    window = page.evaluate("""async () => {
      const keys = ['framesDrawn', 'samplesQueued', 'samplesPlayed', 'underruns', 'audioChunksReceived'];
      const take = () => Object.fromEntries(keys.map((k) => [k, avatard[k]]));
      const before = take(), t0 = performance.now();
      await new Promise((r) => setTimeout(r, 2000));
      const after = take(), seconds = (performance.now() - t0) / 1000;
      return { seconds, ...Object.fromEntries(keys.map((k) => [k, after[k] - before[k]])), fps: avatard.fps,
               buffered: avatard.samplesBuffered };
    }""")
    seconds = window["seconds"]
    assert 20 <= window["framesDrawn"] / seconds <= 30, window
    assert 20 <= window["fps"] <= 30, window
    assert 20 <= window["audioChunksReceived"] / seconds <= 30, window
    assert 0.8 * RATE <= window["samplesQueued"] / seconds <= 1.2 * RATE, window
    assert 0.8 * RATE <= window["samplesPlayed"] / seconds <= 1.2 * RATE, window
    assert window["underruns"] <= 1, window
    assert window["buffered"] < 0.5 * RATE, window
    assert page.evaluate("avatard.samplesPosted") > 0


def test_typed_text_shows_once_then_the_reply_is_spoken(page, tmp_path):
    text = "Hello from the browser test"
    page.fill("#text", text)
    page.press("#text", "Enter")
    expect(page.locator("#text")).to_have_value("")
    reply = page.locator("#transcript .msg.assistant p")
    expect(reply).to_have_text([text])
    # The daemon sends the user line before the reply, so by now any duplicate would be showing.
    expect(page.locator("#transcript .msg.user p")).to_have_text([text])
    roles = page.evaluate("avatard.transcript.map((e) => [e.role, e.text, e.is_final])")
    assert roles == [["user", text, True], ["assistant", text, True]]
    wait(page, "(loud) => __rec.events.filter((e) => e.type === 'audio' && e.peak > loud).length >= 10 && "
               "__rec.statuses().includes('speaking')", LOUD)
    wait(page, "__rec.statuses().lastIndexOf('listening') > __rec.statuses().indexOf('speaking')")
    assert page.evaluate("avatard.underruns") <= 2

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot))
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (800, 1280)
    assert is_picture(image, 100), "the screenshot is blank"
    stage = cv2.imdecode(np.frombuffer(page.locator("#video").screenshot(), np.uint8), cv2.IMREAD_COLOR)
    assert is_picture(stage, 50), "the video canvas is blank in the screenshot"


def test_talk_sends_the_microphone_and_the_daemon_echoes_it(page):
    voice_s = len(tts.synthesize(MIC_PHRASE)) / RATE
    # Next to a loudspeaker the browser's own echo cancellation is the only one on this path (issue 15):
    # the page must ask for it, and Chromium must have applied it to the track it captures from.
    page.evaluate("""() => {
        const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
        navigator.mediaDevices.getUserMedia = async (constraints) => {
            const stream = await real(constraints);
            window.__gum = {constraints, settings: stream.getAudioTracks().map((t) => t.getSettings())};
            return stream;
        };
    }""")
    page.click("#talk")
    wait(page, "avatard.micActive")
    gum = page.evaluate("window.__gum")
    processing = {"echoCancellation": True, "noiseSuppression": True, "autoGainControl": True}
    assert processing.items() <= gum["constraints"]["audio"].items(), gum["constraints"]
    assert [{key: track.get(key) for key in processing} for track in gum["settings"]] == [processing], gum["settings"]
    expect(page.locator("#talk-label")).to_have_text("Stop")
    wait(page, "avatard.micChunksSent >= 25 && avatard.micLevel > 0.001")
    user = page.locator("#transcript .msg.user p").first
    expect(user).to_have_text(re.compile(r"^\[\d+\.\d s of speech\]$"))
    seconds = float(user.inner_text().strip("[").split()[0])
    assert 0.5 * voice_s <= seconds <= voice_s + MIC_PAUSE_S, (seconds, voice_s)
    expect(page.locator("#transcript .msg.assistant p").first).to_have_text(re.compile(r"^\[echo of \d+\.\d s\]$"))
    wait(page, "(loud) => __rec.events.filter((e) => e.type === 'audio' && e.peak > loud).length >= 10", LOUD)
    sent = state(page, "micChunksSent", "micBytesSent")
    assert sent["micBytesSent"] >= sent["micChunksSent"] * 1280 * 0.9, "40 ms chunks of 16 kHz PCM16"
    page.click("#talk")
    wait(page, "!avatard.micActive")
    expect(page.locator("#talk-label")).to_have_text("Talk")


def test_gesture_button_fires_the_gesture(page):
    button = page.locator("#gestures button[data-gesture='mini_wave_hello']")
    expect(button).to_have_text("Mini wave hello")
    clicked = page.evaluate("performance.now()")
    button.click()
    wait(page, "(t) => __rec.events.some((e) => e.type === 'gesture' && e.t > t && e.data.gesture === 'mini_wave_hello')",
         clicked)
    assert page.evaluate("avatard.lastGesture") == "mini_wave_hello"
    expect(page.locator("#gesture-badge")).to_be_visible()
    expect(page.locator("#gesture-badge .label")).to_have_text("Mini wave hello")
    expect(button).to_have_class(re.compile(r"\bfired\b"))


def test_interrupt_cuts_the_reply_and_flushes_the_player(page):
    page.fill("#text", "This is a long answer that will be cut off in the middle by an interrupt. " * 4)
    page.press("#text", "Enter")
    wait(page, "(loud) => __rec.events.filter((e) => e.type === 'audio' && e.peak > loud).length >= 5", LOUD)
    wait(page, "avatard.samplesBuffered > 0")
    clicked = page.evaluate("() => { document.getElementById('interrupt').click(); return performance.now(); }")
    interrupted_at = wait(page, "__rec.statusTime('interrupted')")
    assert interrupted_at > clicked
    expect(page.locator("#transcript .note")).to_have_text(["interrupted"])

    # The worklet dropped what it held: a stats report right after the click shows an empty ring
    # (or the first idle chunk or two refilling it), and its dropped count went up.
    flushed = wait(page, """(t) => {
      const before = __rec.stats.filter((s) => s.t <= t).at(-1);
      const after = __rec.stats.find((s) => s.t > t && s.dropped > before.dropped);
      return after ? { before, after } : null;
    }""", clicked)
    assert flushed["after"]["buffered"] <= 2 * 640, flushed
    assert flushed["after"]["t"] - clicked < 500, flushed

    # Only silence after "interrupted", and the idle stream keeps playing.
    silent = wait(page, "(t) => __rec.audioAfter(t).length >= 20 && __rec.audioAfter(t).map((e) => e.peak)",
                  interrupted_at)
    assert max(silent) == 0, f"stale speech after interrupted: {silent}"
    played = page.evaluate("avatard.samplesPlayed")
    wait(page, "(played) => avatard.samplesPlayed > played + 0.25 * 16000", played)
    assert page.evaluate("avatard.samplesBuffered") < 0.3 * RATE
    assert page.evaluate("avatard.transcript.map((e) => e.role)") == ["user", "assistant"]


def test_camera_button_sends_the_fake_camera_to_gemini_as_jpeg_at_most_once_a_second(browser, daemon_factory):
    with GeminiLiveTestServer() as server:
        daemon = daemon_factory(*SERVER, "--gemini-api-key", "test-key", "--gemini-base-url", server.base_url,
                                "--gemini-ca-file", server.ca_path, env=GEMINI_ENV)
        with open_page(browser, daemon) as page:
            assert server.video_frames == []
            page.click("#camera")
            expect(page.locator("#camera-label")).to_have_text("Camera → model", timeout=WAIT_MS)
            server.wait_for(lambda: len(server.video_frames) >= 4, timeout=15)
            frames = server.video_frames
            for frame in frames:
                assert frame.mime_type == "image/jpeg" and frame.data[:3] == b"\xff\xd8\xff"
                picture = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR)
                assert picture.shape[:2] == (480, 640)  # the fake camera's pictures, within 768 px
            gaps = [b.at - a.at for a, b in zip(frames, frames[1:])]
            assert min(gaps) >= 0.9, gaps  # <= 1 per second (a little jitter on the way)
            assert daemon.status()["presence"]["arrivals"] == 1  # the astronaut's face, seen in the browser's frames

            page.click("#camera")
            expect(page.locator("#camera-label")).to_have_text("Camera")
            stopped = len(server.video_frames)
            time.sleep(3)
            assert len(server.video_frames) <= stopped + 1  # one may have been on its way
            assert daemon.status()["camera"] == "on"  # no longer "sending": the indicator follows the frames
