"""The daemon: one trio root nursery that shows the whole data path.

    sources (control socket, WebSocket clients, mic, audio file, camera)
        --UserAudio/UserText/SayText/CameraFrame--> [input lanes: operator 8 first, shared 16; budget per browser]
        --> brain
    pictures (camera, browsers, avatarctl look) --> Vision (<= 1/s to the brain; faces --> presence events)
    brain --push_audio (SpeechBuffer, 4 s, backpressure)--> renderer (the clock, fps frames/s)
    renderer --Frame--> [render queue, 2, drop+count] --> fan-out
    fan-out --Frame--> [one channel per sink, drop+count] --> WebSocket server, speaker, window, recorder,
        media encoder (encode once) --packets--> broadcast --RTP--> Janus servers (--janus)
    everyone --Event--> event bus --> [one channel per subscriber, drop+count] --> avatarctl, browsers

Interrupts go through the hub, which clears the brain, the renderer's speech buffer and every sink's
queued audio in one synchronous call, so the very next frame is silent everywhere.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import sys

import trio

from . import sd_notify
from .brains.keyword_gestures import DEFAULT_KEYWORDS, KeywordGestures, load_keywords
from .brains.local import LocalBrain
from .config import Config
from .control.server import serve_control
from .core import metrics
from .core.events import EventBus
from .core.faces import FaceDetector
from .core.fanout import RENDER_QUEUE, FanOut
from .core.hub import Hub
from .core.input_lanes import InputLanes
from .core.latency import LatencyMeter
from .core.presence import Presence
from .core.vision import Vision
from .errors import ConfigError, DetectorUnavailable
from .local.setup import LocalSetup, make_local_parts, prepare, start_local_parts
from .renderers.builtin import BuiltinRenderer

logger = logging.getLogger("avatard.app")

# On SIGTERM, q or a closed window, sinks get this long to tell their clients, then everything is
# cancelled. systemd gives us TimeoutStopSec; we promise to be gone well inside 2 s.
STOP_NOTICE = 0.2
# How long a thread may hold the GIL while another waits for it (CPython's default is 5 ms). The asyncio
# bridge's thread parses bursts of Live messages (JSON + base64 in google-genai) while the trio thread
# renders and sends the frame that answers them; at 5 ms per hand-off a frame's few GIL round trips
# (draw, fan-out, encode, send) added tens of ms. 0.5 ms costs a little throughput, which the box has.
GIL_SWITCH_INTERVAL = 0.0005


def make_renderer(config: Config, events: EventBus, latency: LatencyMeter):
    if config.renderer_kind == "bithuman":
        # bitHuman, with the built-in renderer standing by (avatard.renderers.fallback); its size and fps
        # are the model's, known once its run() has started.
        from .renderers.bithuman import make_bithuman_renderer
        return make_bithuman_renderer(config, events, latency)
    return BuiltinRenderer(width=config.width, height=config.height, fps=config.fps, events=events, latency=latency)


def make_brain(config: Config, renderer, events: EventBus, latency: LatencyMeter):
    keywords = KeywordGestures(load_keywords(config.gestures_file) if config.gestures_file else DEFAULT_KEYWORDS,
                               cooldown=config.gesture_cooldown)
    if config.brain_kind == "gemini":
        from .brains.gemini import GeminiBrain
        return GeminiBrain(config=config, renderer=renderer, events=events, latency=latency, keywords=keywords)
    return LocalBrain(renderer=renderer, events=events, latency=latency, keywords=keywords)


def make_vision(config: Config, brain, events: EventBus, inputs: InputLanes) -> Vision | None:
    """Eyes when pictures can come (--camera, or browsers in server mode), with presence from OpenCV's face cascade.

    An OpenCV without the cascade never stops a daemon that does not need it: the pictures still go to a brain
    that sees, and presence is reported unavailable. Only what cannot work without it is a start-up error:
    --greet, or --camera when the brain cannot see either.
    """
    if not config.sees:
        return None
    try:
        detector = FaceDetector.load()
    except DetectorUnavailable as exc:
        if config.greet is not None:
            raise ConfigError(f"--greet: greeting needs face detection, and {exc}") from None
        if config.camera is not None and not brain.sees:
            raise ConfigError(f"--camera: the {brain.name} brain cannot see pictures, and presence needs face "
                              f"detection: {exc}") from None
        logger.warning("presence detection is off: %s", exc)
        return Vision(events=events, inputs=inputs, brain_sees=brain.sees, fps=config.camera_fps,
                      no_detector=str(exc))
    return Vision(events=events, inputs=inputs, brain_sees=brain.sees, fps=config.camera_fps, detector=detector,
                  presence=Presence(config.greet_after))


def make_encoders(config: Config, fanout: FanOut) -> dict:
    """The encode-once media encoders, one per video codec wanted: the WebRTC viewers' (--webrtc-codec, server
    mode) and the broadcast's (--janus-video-codec); when both want the same codec they share one encoder.
    Each is a fan-out sink (the hub flushes it on interrupts) that encodes nothing while nobody subscribes."""
    codecs = ([config.webrtc_codec] if config.server else []) + ([config.janus_video_codec] if config.janus else [])
    if not codecs:
        return {}
    from .media.encoder import MediaEncoder
    return {codec: MediaEncoder(fanout, codec=codec) for codec in dict.fromkeys(codecs)}


def make_broadcast(config: Config, encoders: dict):
    """With --janus: the broadcast that feeds every Janus server from its codec's encoder (a front end: its
    status is ``janus``)."""
    if not config.janus:
        return None
    try:
        from .broadcast.broadcaster import Broadcaster
    except ImportError as exc:  # aiortc (the RTP payloaders) needs Python >= 3.11
        raise ConfigError(f"--janus: the broadcast needs {exc.name}, which is not installed") from None
    return Broadcaster(encoders[config.janus_video_codec], config.janus, admin_key=config.janus_admin_key,
                       mountpoint=config.janus_mountpoint, pin=config.janus_pin)


def main(config: Config, tls=None) -> None:
    """Run the daemon until it stops: in this thread, or in a worker thread when a window is wanted.

    OpenCV's window must own the main thread (see avatard.local.window), which then also takes the signals.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    if config.wants_window:
        from .local.window import check_display
        check_display()  # before any window call: OpenCV's Qt aborts the process without a display
    setup = prepare(config)  # audio file and sound devices: fails with one line before anything runs
    if not config.wants_window:
        trio.run(run, config, None, setup, tls)
        return
    from .local.window import Window
    window = Window()
    window.run(functools.partial(trio.run, run, config, window, setup, tls))


async def run(config: Config, window=None, setup: LocalSetup = LocalSetup(), tls=None) -> None:
    """The daemon in one root nursery. With a ``window``, the caller's main thread handles signals;
    ``tls`` (an :class:`avatard.tls.certificate.ServerTls`, loaded by the CLI) puts the server port on TLS.

    Every part is built first, then the hub with all of them, then the tasks start in data-path order.
    """
    events = EventBus()
    registry = metrics.make_registry()
    latency = LatencyMeter(events, registry)
    renderer = make_renderer(config, events, latency)
    brain = make_brain(config, renderer, events, latency)
    inputs = InputLanes()  # sizes and full-policies: avatard.core.input_lanes
    frames_send, frames_receive = trio.open_memory_channel(RENDER_QUEUE)
    fanout = FanOut(lambda: renderer.generation)
    vision = make_vision(config, brain, events, inputs)
    local = make_local_parts(config, setup, renderer, window)
    encoders = make_encoders(config, fanout)
    server = None
    if config.server:
        from .server.websocket import WsServer
        server = WsServer(config, fanout, registry, encoders[config.webrtc_codec], tls)
    front_ends = (server,) if server is not None else ()
    metrics_port = None
    if config.metrics_port is not None:  # --metrics-port: /metrics on loopback (local mode has no server port)
        from .server.metrics_port import MetricsPort
        metrics_port = MetricsPort(config.metrics_port, registry)
    broadcaster = make_broadcast(config, encoders)  # with --janus
    broadcast = (broadcaster,) if broadcaster is not None else ()
    hub = Hub(renderer=renderer, brain=brain, events=events, latency=latency, fanout=fanout, inputs=inputs,
              sinks=front_ends + tuple(encoders.values()) + local.sinks,
              front_ends=front_ends + broadcast + ((metrics_port,) if metrics_port is not None else ()),
              local_parts=local.all,
              audio_file=local.audio_file, vision=vision, camera_device=local.camera, greeting=config.greet)
    metrics.bind(registry, hub.status)

    async with trio.open_nursery() as nursery:
        stop = functools.partial(_begin_shutdown, nursery.cancel_scope, hub)
        if window is None:
            nursery.start_soon(_stop_on_signals, stop)
        else:
            window.connect(hub, stop)
        await nursery.start(brain.run, inputs, hub)
        nursery.start_soon(fanout.run, frames_receive)
        await nursery.start(renderer.run, frames_send)
        if vision is not None:
            await nursery.start(vision.run)
        logger.info("renderer: %s (%dx%d @ %d fps), brain: %s", renderer.name, renderer.width, renderer.height,
                    renderer.fps, brain.name)
        await nursery.start(serve_control, config.control_socket, hub, registry)
        if metrics_port is not None:
            await nursery.start(metrics_port.run)
        for encoder in encoders.values():
            await nursery.start(encoder.run, renderer.fps)
        if server is not None:
            await nursery.start(server.serve, hub)
        await start_local_parts(nursery, local, hub, fanout)
        if broadcaster is not None:
            await nursery.start(broadcaster.run)
        nursery.start_soon(sd_notify.watchdog, lambda: renderer.frames_rendered > 0)
        sd_notify.notify("READY=1")
        events.publish("status", status="listening")
        logger.info("ready")


def _begin_shutdown(scope: trio.CancelScope, hub: Hub, reason: str) -> None:
    """The one way the daemon stops (signal, q key, closed window): announce it, then cancel everything."""
    if scope.deadline != math.inf:
        return  # already stopping (e.g. `timeout` signals the process and then its group)
    logger.info("%s; shutting down", reason)
    sd_notify.notify("STOPPING=1")
    hub.events.publish("status", status="stopping")
    scope.deadline = trio.current_time() + STOP_NOTICE


async def _stop_on_signals(stop) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            stop(f"got {signal.Signals(signum).name}")
