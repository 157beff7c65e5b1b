"""Keep the avatar on screen when a renderer fails: the built-in one takes over, in place.

:class:`FallbackRenderer` is what the app gets when it asks for the bitHuman renderer. It has the
renderer interface and delegates every call to the *active* renderer: the primary (bitHuman) until it
fails, then a :class:`~avatard.renderers.builtin.BuiltinRenderer` made on the spot. Nothing else in the
daemon knows that a switch can happen: the hub, the brain, the fan-out and the sinks keep calling the
same object, and frames keep coming out of the same channel.

When the primary fails:

* before it started (an unreachable licence server, an engine that never produced a frame), the
  built-in renderer starts in its place with the configured size and fps, and ``nursery.start`` sees it
  start; errors the operator must fix (a bad model, a refused secret) are not :class:`RendererFailed`
  and stop the daemon instead, with one line;
* mid-session (a crash, a stalled engine, a refused credit check, an SDK call that raised: the primary
  raises RendererFailed from ``run()`` and from the ``push_audio`` that hit it), the built-in renderer
  continues with the primary's size and fps, so sinks that fixed their geometry at start-up (the
  recorder) keep working.

Either way there is one warning in the log, a ``status`` event ``renderer_fallback`` (with ``reason``),
and ``name`` becomes ``builtin (fallback)``, which ``avatarctl status`` shows. Speech queued in the failed
renderer is lost: the switch counts as an interrupt (``generation`` moves on, pending ``push_audio``
calls return False); frame indices start again at 0 (timestamps stay on the wall clock). There is no
switching back: restart the daemon to try the primary again.

Rejected: restarting the primary in a loop (a licence or engine fault rarely heals in seconds, and a
flapping avatar is worse than a steady drawn one); making the app supervise renderers (every part that
holds a renderer reference would need re-wiring).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from ..core.events import EventBus
from ..errors import RendererFailed
from .report import renderer_status

logger = logging.getLogger("avatard.renderer")

# Items between the fallback renderer and the forwarder that re-numbers their generation: it only passes
# references on, so room for one tick (a FrameAudio and its Frame) is enough; the built-in renderer
# drops (and counts) if even that is full.
FORWARD_QUEUE = 2
FALLBACK_NAME = "builtin (fallback)"



class FallbackRenderer:
    """The renderer interface over a primary renderer, with the built-in one as a stand-by.

    ``make_fallback(geometry)`` builds the stand-by: ``geometry`` is ``(width, height, fps)`` of the
    primary when it had started, else None (use the configured values). The primary must raise
    :class:`RendererFailed` for failures a fallback should cover and expose ``started`` (True once it
    called ``task_status.started()``).
    """

    def __init__(self, primary, make_fallback: Callable[[tuple[int, int, int] | None], object], events: EventBus) -> None:
        self._primary = primary
        self._make_fallback = make_fallback
        self._events = events
        self._fallback = None
        self._active = primary
        self._generation_offset = 0
        self._forward_dropped = 0
        self._switched = trio.Event()  # the built-in renderer is active
        self.fallback_reason: str | None = None

    # -- the renderer interface, delegated --------------------------------------------------------

    @property
    def name(self) -> str:
        return FALLBACK_NAME if self._fallback is not None else self._primary.name

    @property
    def width(self) -> int:
        return self._active.width

    @property
    def height(self) -> int:
        return self._active.height

    @property
    def fps(self) -> int:
        return self._active.fps

    @property
    def samples_per_frame(self) -> int:
        return self._active.samples_per_frame

    @property
    def gestures(self) -> list[str]:
        return self._active.gestures

    @property
    def generation(self) -> int:
        return self._generation_offset + self._active.generation

    @property
    def speaking(self) -> bool:
        return self._active.speaking

    @property
    def last_frame(self):
        return self._active.last_frame

    @property
    def frames_rendered(self) -> int:
        return self._primary.frames_rendered + (self._fallback.frames_rendered if self._fallback else 0)

    @property
    def frames_dropped(self) -> int:
        fallback = self._fallback.frames_dropped if self._fallback else 0
        return self._primary.frames_dropped + fallback + self._forward_dropped

    @property
    def ticks_skipped(self) -> int:
        return self._primary.ticks_skipped + (self._fallback.ticks_skipped if self._fallback else 0)

    def status(self) -> dict:
        return renderer_status(self, fallback_reason=self.fallback_reason)

    async def push_audio(self, samples) -> bool:
        """Delegated; when the primary raises RendererFailed, wait for the switch, then False.

        The chunk went down with the primary, and the switch counts as an interrupt (module docstring);
        the next push goes to the built-in renderer. A failing built-in renderer has nothing behind it.
        """
        active = self._active
        try:
            return await active.push_audio(samples)
        except RendererFailed:
            if active is not self._primary:
                raise
            await self._switched.wait()  # run() sees the same failure and hands over
            return False

    def flush(self) -> None:
        self._active.flush()

    def interrupt(self) -> int:
        return self._active.interrupt()

    def gesture(self, name: str) -> None:
        self._active.gesture(name)

    async def run(self, frames: trio.MemorySendChannel, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with frames:
            try:
                await self._primary.run(frames.clone(), task_status=task_status)
                reason = f"the {self._primary.name} renderer stopped"  # run() returning at all is a failure
            except RendererFailed as exc:
                reason = str(exc)
            started = getattr(self._primary, "started", False)
            await self._run_fallback(frames, reason, started, task_status=trio.TASK_STATUS_IGNORED if started else task_status)

    # -- internals --------------------------------------------------------------------------------

    async def _run_fallback(self, frames: trio.MemorySendChannel, reason: str, mid_session: bool, *, task_status) -> None:
        primary = self._primary
        geometry = (primary.width, primary.height, primary.fps) if mid_session else None
        fallback = self._make_fallback(geometry)
        logger.warning("%s renderer failed: %s; the built-in avatar takes over", primary.name, reason)
        # The switch is an interrupt: whatever the primary had queued is gone, and the generation every
        # sink compares against must move past every frame the primary emitted.
        self._generation_offset = primary.generation + 1
        was_speaking = primary.speaking
        self._fallback = fallback
        self._active = fallback
        self._switched.set()
        self.fallback_reason = reason
        self._events.publish("status", status="renderer_fallback", renderer="builtin", reason=reason)
        if mid_session and was_speaking:
            self._events.publish("status", status="listening")
        send, receive = trio.open_memory_channel(FORWARD_QUEUE)
        async with trio.open_nursery() as nursery:
            await nursery.start(fallback.run, send)
            task_status.started()
            async with receive:
                async for frame in receive:
                    frame = attrs.evolve(frame, generation=frame.generation + self._generation_offset)
                    try:
                        frames.send_nowait(frame)
                    except trio.WouldBlock:
                        self._forward_dropped += 1  # the fan-out is behind: drop, like any renderer would
