"""A stand-in for the bitHuman SDK (bithuman 2.12.9): ``AsyncBithuman`` with the real method names,
signatures and frame shape, and no model, no licence, no network.

``make_sdk(**knobs)`` returns a module-like namespace (``AsyncBithuman``, ``VideoControl``, ...) to pass
as ``BithumanRenderer(sdk=...)``; ``install(**knobs)`` puts one in ``sys.modules["bithuman"]`` for a
daemon subprocess. The dataclasses and exception classes are the real SDK's, so frames look exactly like
the SDK's and errors classify exactly like the SDK's. ``tests/test_bithuman_renderer.py`` checks that the
signatures here match the installed SDK.

Like the SDK: ``run()`` emits one VideoFrame per tick at the model's fps, idle or not (``pace=False``
makes it emit as fast as it is read); a tick carries ``samples_per_tick`` samples of the pushed speech in
``audio_chunk`` (None when idle) and ``end_of_speech`` on the last tick of a flushed utterance;
``interrupt()`` drops the utterance; ``push(VideoControl(action=...))`` is recorded. Faults on demand:
``create_errors``, ``crash_after`` (``run()`` raises), ``hang_after`` (``run()`` stops yielding),
``push_fails_after`` (``push_audio()`` raises).
"""

from __future__ import annotations

import asyncio
import os
import sys
import types
from typing import Any, AsyncIterator, Optional, Tuple

import bithuman
import numpy as np
import soxr
from bithuman import AudioChunk, VideoControl, VideoFrame

_DEFAULT_AUTH_URL = "https://api.bithuman.ai/v1/runtime-tokens/request"
_DEFAULT_OUTPUT_SIZE = (1280, 720)


class Script:
    """Knobs and a record of what the adapter did, shared between a test and the SDK's asyncio thread."""

    def __init__(self, *, fps: int = 25, size: tuple[int, int] = (64, 48), pace: bool = True, audio_rate: int = 16000,
                 create_errors: list[BaseException] | None = None, crash_after: int | None = None,
                 crash_error: BaseException | None = None, hang_after: int | None = None, idle_audio: bool = False,
                 push_fails_after: int | None = None, push_error: BaseException | None = None) -> None:
        self.fps = fps
        self.size = size  # (width, height)
        self.pace = pace
        self.audio_rate = audio_rate  # the rate of the audio chunks in frames (the SDK's is 16 kHz)
        self.create_errors = list(create_errors or [])  # raised by successive create() calls
        self.crash_after = crash_after  # run() raises crash_error after this many frames
        self.crash_error = crash_error or RuntimeError("libessence: engine died")
        self.hang_after = hang_after  # run() stops yielding after this many frames
        self.idle_audio = idle_audio  # emit silent chunks while idle (instead of None)
        self.push_fails_after = push_fails_after  # push_audio raises push_error after this many pushes
        self.push_error = push_error or RuntimeError("libessence: audio input closed")
        self.pushes = 0
        self.calls: list[tuple] = []
        self.creates = 0
        self.frames = 0

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


class FakeAsyncBithuman:
    script: Script = Script()  # replaced per SDK by make_sdk()

    def __init__(self, *, input_buffer_size: int = 0, output_buffer_size: int = 6,
                 output_size: Optional[Tuple[int, int]] = _DEFAULT_OUTPUT_SIZE, tags: Optional[str] = "bithuman",
                 billing_type: str = "self-hosted-essence-model", api_secret: Optional[str] = None,
                 api_url: str = _DEFAULT_AUTH_URL, agent_code: Optional[str] = None, num_threads: int = 0) -> None:
        self._api_secret = api_secret
        self._pending = np.zeros(0, dtype=np.int16)
        self._flushed = False
        self._model_path: Optional[str] = None

    @classmethod
    async def create(cls, *, model_path: Optional[str] = None, token: Optional[str] = None,
                     api_secret: Optional[str] = None, api_url: str = _DEFAULT_AUTH_URL, tags: Optional[str] = "bithuman",
                     insecure: bool = False, input_buffer_size: int = 0, output_buffer_size: int = 6, num_threads: int = 0,
                     verbose: Optional[bool] = None, batch_workers: int = 1, quality: str = "medium",
                     identity: Optional[str] = None, output_size: Optional[Tuple[int, int]] = _DEFAULT_OUTPUT_SIZE,
                     billing_type: str = "self-hosted-essence-model", agent_code: Optional[str] = None,
                     fingerprint: Optional[str] = None) -> "FakeAsyncBithuman":
        script = cls.script
        script.creates += 1
        script.calls.append(("create", dict(model_path=model_path, api_secret=api_secret, agent_code=agent_code)))
        await asyncio.sleep(0.01)  # the real one authenticates and loads in worker threads
        if script.create_errors:
            raise script.create_errors.pop(0)
        if model_path is None or not os.path.exists(model_path):
            raise bithuman.ModelNotFoundError(f"Essence model not found: {model_path}")
        runtime = cls(api_secret=api_secret, agent_code=agent_code, output_size=output_size)
        runtime._model_path = model_path
        return runtime

    @property
    def fps(self) -> int:
        return self.script.fps

    @property
    def frame_width(self) -> Optional[int]:
        return self.script.size[0]

    @property
    def frame_height(self) -> Optional[int]:
        return self.script.size[1]

    @property
    def sample_rate(self) -> int:
        return 16000

    @property
    def samples_per_tick(self) -> int:
        return 16000 // self.script.fps

    async def start(self, **kwargs) -> None:
        self.script.calls.append(("start",))

    async def push_audio(self, data: bytes, sample_rate: int, last_chunk: bool = True) -> None:
        script = self.script
        if script.push_fails_after is not None and script.pushes >= script.push_fails_after:
            raise script.push_error
        script.pushes += 1
        samples = np.frombuffer(data, dtype=np.int16)
        self.script.calls.append(("push_audio", len(samples), sample_rate, last_chunk))
        self._pending = np.concatenate((self._pending, samples))
        self._flushed = self._flushed or last_chunk

    async def flush(self) -> None:
        self.script.calls.append(("flush",))
        self._flushed = True

    def interrupt(self) -> None:
        self.script.calls.append(("interrupt", len(self._pending)))
        self._pending = np.zeros(0, dtype=np.int16)
        self._flushed = False

    async def push(self, control: VideoControl) -> None:
        self.script.calls.append(("push", control.action))

    def run(self) -> AsyncIterator[VideoFrame]:
        return self._frames()

    async def stop(self) -> None:
        self.script.calls.append(("stop",))

    async def shutdown(self) -> None:
        self.script.calls.append(("shutdown",))

    def cleanup(self) -> None:
        self.script.calls.append(("cleanup",))

    async def _frames(self) -> AsyncIterator[VideoFrame]:
        script = self.script
        loop = asyncio.get_running_loop()
        period = 1.0 / script.fps
        tick = self.samples_per_tick
        width, height = script.size
        started = loop.time()
        index = 0
        while True:
            if script.pace:
                await asyncio.sleep(max(0.0, started + index * period - loop.time()))
            else:
                await asyncio.sleep(0)
            if script.crash_after is not None and index >= script.crash_after:
                raise script.crash_error
            if script.hang_after is not None and index >= script.hang_after:
                await asyncio.Event().wait()
            chunk, end = None, False
            if self._pending.size:
                samples = np.zeros(tick, dtype=np.int16)
                take = min(tick, self._pending.size)
                samples[:take] = self._pending[:take]
                self._pending = self._pending[take:]
                end = self._flushed and not self._pending.size
                if script.audio_rate != 16000:
                    samples = soxr.resample(samples, 16000, script.audio_rate).astype(np.int16)
                chunk = AudioChunk(data=samples, sample_rate=script.audio_rate, last_chunk=end)
                if end:
                    self._flushed = False
            elif script.idle_audio:
                chunk = AudioChunk(data=np.zeros(tick, dtype=np.int16), sample_rate=16000, last_chunk=False)
            image = np.full((height, width, 3), index % 256, dtype=np.uint8)
            script.frames += 1
            yield VideoFrame(bgr_image=image, audio_chunk=chunk, frame_index=index, end_of_speech=end)
            index += 1


def make_sdk(**knobs: Any) -> types.SimpleNamespace:
    """A module-like stand-in for ``bithuman`` with its own Script (as ``sdk.script``)."""
    script = Script(**knobs)
    runtime_class = type("AsyncBithuman", (FakeAsyncBithuman,), {"script": script})
    namespace = {name: getattr(bithuman, name) for name in bithuman.__all__
                 if not name.startswith("__") and name not in ("AsyncAvatar", "AsyncBithuman")}
    namespace.update(AsyncBithuman=runtime_class, VideoControl=VideoControl, VideoFrame=VideoFrame,
                     AudioChunk=AudioChunk, script=script, __version__=bithuman.__version__ + "+fake")
    return types.SimpleNamespace(**namespace)


def sdk_error(name: str, message: str) -> BaseException:
    """An exception of the real SDK's class ``name`` (or a builtin one, e.g. RuntimeError)."""
    import builtins
    cls = getattr(bithuman, name, None) or getattr(builtins, name)
    return cls(message)


def install(**knobs: Any) -> types.SimpleNamespace:
    """Make ``import bithuman`` return a stand-in (for a daemon subprocess started by a test).

    JSON-friendly: ``create_errors`` and ``crash_error`` may be ``[class name, message]`` pairs.
    """
    if "create_errors" in knobs:
        knobs["create_errors"] = [sdk_error(*spec) if isinstance(spec, (list, tuple)) else spec for spec in knobs["create_errors"]]
    if isinstance(knobs.get("crash_error"), (list, tuple)):
        knobs["crash_error"] = sdk_error(*knobs["crash_error"])
    sdk = make_sdk(**knobs)
    sys.modules["bithuman"] = sdk  # type: ignore[assignment]
    return sdk
