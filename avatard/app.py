"""The daemon: one trio root nursery that shows the whole data path.

    sources (control socket, WebSocket clients, mic, audio file)
        --UserAudio/UserText/SayText--> [brain_inputs, 16] --> brain
    brain --push_audio (SpeechBuffer, 4 s, backpressure)--> renderer (the clock, fps frames/s)
    renderer --Frame--> [render queue, 2, drop+count] --> fan-out
    fan-out --Frame--> [one channel per sink, drop+count] --> WebSocket server, speaker, window, recorder
    everyone --Event--> event bus --> [one channel per subscriber, drop+count] --> avatarctl, browsers

Interrupts go through the hub, which clears the brain, the renderer's speech buffer and every sink's
queued audio in one synchronous call, so the very next frame is silent everywhere.
"""

from __future__ import annotations

import logging
import signal

import trio

from . import sd_notify
from .builtin_renderer import BuiltinRenderer
from .config import Config
from .control import serve_control
from .events import EventBus
from .fanout import RENDER_QUEUE, FanOut
from .hub import Hub
from .latency import LatencyMeter
from .local_brain import LocalBrain

logger = logging.getLogger("avatard.app")

# User input waiting for the brain. Speech and turns must not be lost, so sources wait when it is
# full (a browser's reader then stops reading: TCP backpressure to that one client).
BRAIN_INPUT_QUEUE = 16
# systemd gives us TimeoutStopSec; we promise to be gone well inside 2 s.
SHUTDOWN_GRACE = 1.5


def make_renderer(config: Config, events: EventBus, latency: LatencyMeter):
    return BuiltinRenderer(width=config.width, height=config.height, fps=config.fps, events=events, latency=latency)


def make_brain(config: Config, renderer, events: EventBus, latency: LatencyMeter):
    return LocalBrain(renderer=renderer, events=events, latency=latency)


async def run(config: Config) -> None:
    events = EventBus()
    latency = LatencyMeter(events)
    renderer = make_renderer(config, events, latency)
    brain = make_brain(config, renderer, events, latency)
    logger.info("renderer: %s (%dx%d @ %d fps), brain: %s", renderer.name, renderer.width, renderer.height,
                renderer.fps, brain.name)
    brain_send, brain_receive = trio.open_memory_channel(BRAIN_INPUT_QUEUE)
    frames_send, frames_receive = trio.open_memory_channel(RENDER_QUEUE)
    hub = Hub(config=config, renderer=renderer, brain=brain, events=events, latency=latency, brain_inputs=brain_send)
    fanout = FanOut(lambda: renderer.generation)
    hub.fanout = fanout

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals, nursery.cancel_scope, hub)
        await nursery.start(brain.run, brain_receive)
        nursery.start_soon(fanout.run, frames_receive)
        await nursery.start(renderer.run, frames_send)
        await nursery.start(serve_control, config.control_socket, hub)
        if config.server:
            from .ws_server import serve_ws
            await nursery.start(serve_ws, config, hub, fanout)
        nursery.start_soon(sd_notify.watchdog, lambda: renderer.frames_rendered > 0)
        sd_notify.notify("READY=1")
        events.publish("status", status="ready")
        logger.info("ready")


async def _stop_on_signals(scope: trio.CancelScope, hub: Hub) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logger.info("got %s; shutting down", signal.Signals(signum).name)
            sd_notify.notify("STOPPING=1")
            hub.events.publish("status", status="stopping")
            # Give sinks a moment to tell their clients, then cancel everything.
            scope.deadline = trio.current_time() + 0.2
            await trio.sleep(SHUTDOWN_GRACE)
            return
