"""Run asyncio-only SDKs (google-genai Live, bitHuman) from trio: the one place that does it.

Design (Route 1 of the asyncio bridge notes): a private asyncio loop runs in a daemon worker thread; trio talks to it
through a handle, :class:`AsyncioLoop`, obtained from :func:`open_asyncio_loop`::

    async with open_asyncio_loop() as aio:
        answer = await aio.run(some_asyncio_fn, arg)
        aio.call_soon(some_fn_or_asyncio_fn, arg)     # fire and forget, FIFO, bounded
        async with aio.open_stream(some_async_generator_fn, arg, max_buffer=16) as messages:
            async for message in messages:
                ...

The handle is the whole surface: the asyncio loop object itself is not handed out, so nothing outside this module
schedules onto it behind the bridge's back (and every call into it is bounded and accounted for).

Rejected: trio-asyncio. Importing it patches asyncio for the whole process, ``open_loop()`` wraps errors in nested
ExceptionGroups, and its ``aio_as_trio`` wrappers left the SDK's websocket open under a trio timeout (closed by GC
with 1011) and left async generators unexhausted.

The traps this module is built around:

* The asyncio thread never blocks on trio. Results and stream items cross with ``TrioToken.run_sync_soon`` (FIFO,
  non-blocking). A blocking ``trio.from_thread.run(send_channel.send, ...)`` deadlocks as soon as the channel is
  full while a trio task is itself waiting for something that needs the asyncio loop.
* Stream backpressure is credit-based: an ``asyncio.Semaphore`` sized like the trio channel. The producer takes a
  credit before it pulls the next item and the trio consumer returns one per item received, so ``send_nowait`` can
  never meet a full channel and the source is not read ahead of the consumer.
* After each item the producer yields (``asyncio.sleep(0)``): websockets' ``recv()`` returns buffered frames without
  yielding, so a receive loop would otherwise starve the rest of the loop during a burst (p50 13-17 ms -> <1 ms).
* Fire-and-forget calls (``call_soon``) are bounded: each pending call holds a callback in asyncio's unbounded ready
  queue or a task, so a caller that spams (a browser sending gestures) would grow the loop without limit. Past
  :data:`MAX_PENDING_CALLS` the call is refused with ``trio.WouldBlock`` and counted, like ``send_nowait`` on a full
  channel; the caller drops it (lossy calls) or treats it as a failure (calls that must arrive). The trio thread
  owns the bookkeeping (the pending calls and their tasks' strong references); the asyncio thread only reports
  each call's end back through ``run_sync_soon``.
* Cancellation crosses in both directions and waits, bounded, for the other side: a cancelled ``run()`` or a closed
  stream cancels the asyncio task and waits until its ``finally`` blocks have run, so an SDK session can send its
  close frame (a task that is merely abandoned ends up closed by websockets with 1011).

Nothing here knows about any SDK. Code that owns an SDK connection should do connect, receive and close inside one
asyncio coroutine or async generator and close the session itself on the way out (``session.close()`` before the
task is cancelled, or the server sees 1011).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import outcome
import trio

from ..errors import AsyncioCancelledError

logger = logging.getLogger("avatard.aio_bridge")

T = TypeVar("T")

# How long trio waits for an asyncio task to finish after cancelling it: enough for an SDK to send a close frame and
# read the echo on a healthy link, short enough that a dead link does not stall shutdown.
CANCEL_TIMEOUT = 5.0
# How long leaving open_asyncio_loop() waits for the thread's Runner.close() (cancel leftover tasks, finalize async
# generators, shut down the default executor). After that the daemon thread is abandoned.
SHUTDOWN_TIMEOUT = 5.0
# Default stream buffer: 16 Live messages (40 ms audio each) is 640 ms, enough to ride out a slow trio consumer. When
# it is full the producer stops pulling; the SDK's websocket buffers, then TCP pushes back on the server.
DEFAULT_MAX_BUFFER = 16
# call_soon() calls scheduled and not yet finished, per loop; beyond this call_soon() raises trio.WouldBlock. Far above
# what a well-behaved caller has in flight (the bitHuman renderer: a few gestures, an interrupt, a flush), low enough
# that a flood costs nothing: the loop never holds more than this many of our callbacks and tasks.
MAX_PENDING_CALLS = 64



def _to_trio(token: trio.lowlevel.TrioToken, fn: Callable[..., object], *args: object) -> None:
    """Schedule ``fn(*args)`` in the trio thread. Called from the asyncio thread; never blocks."""
    try:
        token.run_sync_soon(fn, *args)
    except trio.RunFinishedError:
        pass  # trio.run() has returned: nobody is left to tell


class AsyncioLoop:
    """Handle on the private asyncio loop. Get one from :func:`open_asyncio_loop`; valid inside its block only."""

    def __init__(self, loop: asyncio.AbstractEventLoop, token: trio.lowlevel.TrioToken, *,
                 max_pending_calls: int = MAX_PENDING_CALLS) -> None:
        self._loop = loop
        self._token = token
        self._closed = False
        # call_soon() bookkeeping, trio thread only: call id -> a box the asyncio thread puts the call's task in
        # (the strong reference asyncio wants kept), removed when the trio thread hears the call has finished.
        self._max_pending_calls = max_pending_calls
        self._calls: dict[int, list[asyncio.Task[Any]]] = {}
        self._call_ids = itertools.count()
        self.calls_refused = 0  # call_soon() calls refused because max_pending_calls were pending

    @property
    def pending_calls(self) -> int:
        """call_soon() calls scheduled and not yet finished (as far as the trio thread has heard)."""
        return len(self._calls)

    def _to_asyncio(self, fn: Callable[..., object], *args: object) -> None:
        """Schedule ``fn(*args)`` in the asyncio thread (FIFO with earlier calls)."""
        if self._closed:
            raise trio.ClosedResourceError("the asyncio loop is shutting down")
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # "Event loop is closed": the thread has already ended
            raise trio.ClosedResourceError("the asyncio loop is closed") from None

    def _spawn(
        self,
        async_fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        on_done: Callable[[outcome.Outcome[T]], None],
    ) -> Callable[[], None]:
        """Start ``async_fn(*args)`` as an asyncio task; ``on_done(outcome)`` runs in trio once it has finished.

        Returns a function that cancels the task from the trio thread, once: a second ``Task.cancel()`` would land
        in the task's cleanup (an SDK's close handshake) and cut it short. A no-op once the loop is gone.
        """
        task_box: list[asyncio.Task[T]] = []
        cancel_requested = False

        async def call() -> T:  # the coroutine is created here, so a bad call fails in the task, not the callback
            return await async_fn(*args)

        def finished(task: asyncio.Task[T]) -> None:  # asyncio thread
            _to_trio(self._token, on_done, outcome.capture(task.result))

        def start() -> None:  # asyncio thread
            task_box.append(self._loop.create_task(call()))
            task_box[0].add_done_callback(finished)

        def cancel() -> None:  # trio thread; call_soon_threadsafe is FIFO, so start() has run before this lands
            nonlocal cancel_requested
            if cancel_requested:
                return
            cancel_requested = True
            try:
                self._to_asyncio(lambda: task_box[0].cancel())
            except trio.ClosedResourceError:
                pass  # shutting down: Runner.close() cancels the task anyway

        self._to_asyncio(start)
        return cancel

    def call_soon(
        self,
        fn: Callable[..., object],
        *args: Any,
        on_done: Callable[[outcome.Outcome[Any]], None] | None = None,
    ) -> None:
        """Schedule ``fn(*args)`` on the asyncio loop and return at once. Call it from the trio thread.

        ``fn`` runs as a loop callback; if it returns a coroutine (``fn`` is an ``async def`` function) that is
        started as a task right there. Calls start in the order they were made, FIFO with each other and with the
        starts of ``run()`` and ``open_stream()`` (once started, tasks interleave at their awaits as asyncio does).

        ``on_done(outcome)`` runs in the trio thread once the call (its task, for a coroutine) has finished; it must
        not block. An asyncio-side cancellation (the loop shutting down) arrives as :class:`AsyncioCancelledError`.
        Without ``on_done``, an error is logged at WARNING with its traceback, never lost; a cancellation is not
        an error there.

        When ``max_pending_calls`` calls are pending (scheduled and not yet finished) this raises ``trio.WouldBlock``
        and counts the call in :attr:`calls_refused`; nothing was scheduled. Once the ``open_asyncio_loop()`` block
        is being left it raises ``trio.ClosedResourceError``.
        """
        if self._closed:
            raise trio.ClosedResourceError("the asyncio loop is shutting down")
        if len(self._calls) >= self._max_pending_calls:
            self.calls_refused += 1
            raise trio.WouldBlock
        call_id = next(self._call_ids)
        task_box: list[asyncio.Task[Any]] = []

        def finished(result: outcome.Outcome[Any]) -> None:  # trio thread
            del self._calls[call_id]
            if isinstance(result, outcome.Error) and isinstance(result.error, asyncio.CancelledError):
                result = outcome.Error(AsyncioCancelledError(f"{fn!r} was cancelled on the asyncio side"))
            if on_done is not None:
                try:
                    on_done(result)
                except Exception:  # a run_sync_soon callback must not raise: trio would crash
                    logger.exception("on_done callback of %r failed", fn)
            elif isinstance(result, outcome.Error) and not isinstance(result.error, AsyncioCancelledError):
                error = result.error
                logger.warning("asyncio call %r failed: %r", fn, error, exc_info=(type(error), error, error.__traceback__))

        def task_finished(task: asyncio.Task[Any]) -> None:  # asyncio thread
            _to_trio(self._token, finished, outcome.capture(task.result))

        def start() -> None:  # asyncio thread
            result = outcome.capture(fn, *args)
            if isinstance(result, outcome.Value) and asyncio.iscoroutine(result.value):
                task_box.append(self._loop.create_task(result.value))
                task_box[0].add_done_callback(task_finished)
            else:
                _to_trio(self._token, finished, result)

        self._to_asyncio(start)  # raises ClosedResourceError if the thread has ended: then nothing is pending
        self._calls[call_id] = task_box

    async def _settle(self, done: trio.Event, cancel: Callable[[], None], what: object) -> None:
        """Cancel an asyncio task and wait, shielded and bounded, until it has finished (its finally blocks ran)."""
        if done.is_set():
            return
        cancel()
        with trio.move_on_after(CANCEL_TIMEOUT, shield=True):
            await done.wait()
        if not done.is_set():
            logger.warning("asyncio task %r ignored cancellation for %.1f s; abandoned", what, CANCEL_TIMEOUT)

    async def run(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await async_fn(*args)`` as a task on the asyncio loop; return its result or raise its exception.

        Cancelling the calling trio task cancels the asyncio task and waits up to CANCEL_TIMEOUT for it to finish,
        so its cleanup has run when this returns. If the asyncio side cancels the task instead, this raises
        :class:`AsyncioCancelledError`. Like trio, this takes no keyword arguments: use ``functools.partial``.
        """
        done = trio.Event()
        results: list[outcome.Outcome[T]] = []

        def on_done(result: outcome.Outcome[T]) -> None:
            results.append(result)
            done.set()

        cancel = self._spawn(async_fn, args, on_done)
        try:
            await done.wait()
        finally:
            await self._settle(done, cancel, async_fn)
        return _unwrap(results[0], async_fn)

    @asynccontextmanager
    async def open_stream(
        self, agen_fn: Callable[..., AsyncIterator[T]], *args: Any, max_buffer: int = DEFAULT_MAX_BUFFER
    ) -> AsyncIterator[trio.abc.ReceiveChannel[T]]:
        """Iterate ``agen_fn(*args)`` on the asyncio loop and yield a trio receive channel of its items.

        At most ``max_buffer`` items are in flight (pulled but not yet received by trio); the producer waits for
        credit before pulling more. When the iterator ends the channel ends; if it raised, the exception is raised
        by the ``receive()`` that would have seen the end. Leaving the block cancels the asyncio task and waits,
        bounded, for its cleanup (the iterator is ``aclose()``-d in its own task); closing the channel early makes
        the next delivery cancel it. No trio task is involved, so errors in the block are not wrapped in groups.
        """
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be >= 1 (credits are sized like the channel), got {max_buffer}")
        send, receive = trio.open_memory_channel[T](max_buffer)
        credits = asyncio.Semaphore(max_buffer)  # binds to the asyncio loop on first use, in the asyncio thread
        stream = _StreamChannel(receive, lambda: self._to_asyncio(credits.release))
        finished = trio.Event()

        def deliver(item: T) -> None:  # trio thread; credits guarantee room, so WouldBlock cannot happen
            try:
                send.send_nowait(item)
            except trio.BrokenResourceError:  # the consumer closed the channel: stop the producer
                cancel()

        def on_done(result: outcome.Outcome[None]) -> None:  # trio thread, after every deliver (FIFO)
            try:
                _unwrap(result, agen_fn)
            except BaseException as exc:  # delivered to the consumer, raised by receive() at the end
                stream._error = exc
            send.close()
            finished.set()

        async def pump() -> None:  # asyncio thread
            agen = agen_fn(*args)
            try:
                while True:
                    await credits.acquire()
                    try:
                        item = await anext(agen)
                    except StopAsyncIteration:
                        return
                    _to_trio(self._token, deliver, item)
                    await asyncio.sleep(0)  # see module docstring: recv() may not yield during a burst
            finally:
                aclose = getattr(agen, "aclose", None)
                if aclose is not None:
                    await aclose()

        cancel = self._spawn(pump, (), on_done)
        try:
            yield stream
        finally:
            receive.close()  # items still arriving are dropped by deliver()
            await self._settle(finished, cancel, agen_fn)


def _unwrap(result: outcome.Outcome[T], what: object) -> T:
    """Return an asyncio task's result, or raise its error, asyncio's CancelledError translated for trio."""
    if isinstance(result, outcome.Error) and isinstance(result.error, asyncio.CancelledError):
        raise AsyncioCancelledError(f"{what!r} was cancelled on the asyncio side") from None
    return result.unwrap()


class _StreamChannel(trio.abc.ReceiveChannel[T]):
    """The trio end of open_stream(): returns a credit per item and raises the producer's error at the end."""

    def __init__(self, channel: trio.MemoryReceiveChannel[T], give_credit: Callable[[], None]) -> None:
        self._channel = channel
        self._give_credit = give_credit
        self._error: BaseException | None = None

    async def receive(self) -> T:
        try:
            item = await self._channel.receive()
        except trio.EndOfChannel:
            error, self._error = self._error, None  # raise it once; after that the stream has simply ended
            if error is not None:
                raise error from None
            raise
        try:
            self._give_credit()
        except trio.ClosedResourceError:
            pass  # loop shutting down: the producer is being cancelled anyway
        return item

    async def aclose(self) -> None:
        await self._channel.aclose()


def _run_private_loop(main) -> None:
    """``asyncio.Runner(loop_factory=SelectorEventLoop).run(main)``, with the same clean-up on Python 3.10."""
    if hasattr(asyncio, "Runner"):  # Python >= 3.11
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            runner.run(main)
        return
    loop = asyncio.SelectorEventLoop()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    finally:
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        asyncio.set_event_loop(None)
        loop.close()


@asynccontextmanager
async def open_asyncio_loop(
    *, shutdown_timeout: float = SHUTDOWN_TIMEOUT, max_pending_calls: int = MAX_PENDING_CALLS
) -> AsyncIterator[AsyncioLoop]:
    """Start a private asyncio loop in a daemon thread for the duration of the block.

    The loop is ``asyncio.Runner(loop_factory=asyncio.SelectorEventLoop)``, so leaving the block gets Runner's
    cleanup: leftover tasks are cancelled and awaited, async generators finalized, the default executor shut down.
    That is waited for up to ``shutdown_timeout`` seconds (shielded); after that the thread is abandoned with a
    warning (it is a daemon, so it cannot keep the process alive). ``max_pending_calls`` bounds
    :meth:`AsyncioLoop.call_soon`.
    """
    if max_pending_calls < 1:
        raise ValueError(f"max_pending_calls must be >= 1, got {max_pending_calls}")
    token = trio.lowlevel.current_trio_token()
    ready = trio.Event()
    stopped = trio.Event()
    handles: dict[str, Any] = {}

    async def serve() -> None:  # asyncio thread
        handles["stop"] = stop = asyncio.Event()
        handles["loop"] = asyncio.get_running_loop()
        _to_trio(token, ready.set)
        await stop.wait()

    def thread_main() -> None:
        try:
            _run_private_loop(serve())
        except BaseException:
            logger.error("asyncio loop thread failed", exc_info=True)
        finally:
            _to_trio(token, ready.set)  # unblock the start-up wait if serve() never ran
            _to_trio(token, stopped.set)

    threading.Thread(target=thread_main, name="avatard-asyncio", daemon=True).start()
    await ready.wait()
    if "loop" not in handles:
        raise RuntimeError("the asyncio loop thread failed to start (see log)")
    aio = AsyncioLoop(handles["loop"], token, max_pending_calls=max_pending_calls)
    try:
        yield aio
    finally:
        try:
            aio._to_asyncio(handles["stop"].set)
        except trio.ClosedResourceError:
            pass  # the thread has already ended
        aio._closed = True
        with trio.move_on_after(shutdown_timeout, shield=True):
            await stopped.wait()
        if not stopped.is_set():
            logger.warning("asyncio loop thread did not stop within %.1f s; abandoned", shutdown_timeout)
