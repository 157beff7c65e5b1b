"""What waits to be sent to Gemini: kept across reconnects, so nothing typed or said is lost to a drop.

Two bounded queues, a one-picture slot and one wake-up event. The sender peeks at the front item, sends it, and only then removes
it (:meth:`Outbox.sent`): a connection that dies mid-send leaves the item for the next connection.
"""

from __future__ import annotations

import collections

import attrs
import trio

# Audio waiting to be sent. While connected it drains within milliseconds; while reconnecting it keeps the
# newest ~10 s (500 chunks of 20 ms) and drops the oldest, counted and reported with an error event.
OUTBOX_AUDIO = 500
# Text turns and tool responses waiting to be sent; never dropped. When full, new text turns are refused
# (put_turn returns False, the brain answers with an error event): a person typing faster than a reconnect is
# rare. Tool responses are never refused: a model waits for them, and at most one per tool call is queued.
OUTBOX_TURNS = 16

TEXT = "text"
TOOL = "tool"
AUDIO = "audio"
VIDEO = "video"


@attrs.define(eq=False)  # identity: the sender removes exactly the item it sent
class Outgoing:
    kind: str  # TEXT, TOOL, AUDIO or VIDEO
    payload: object  # str, list[types.FunctionResponse], bytes of s16le audio, or bytes of a JPEG


class Outbox:
    def __init__(self) -> None:
        self._audio: collections.deque[Outgoing] = collections.deque(maxlen=OUTBOX_AUDIO)
        self._turns: collections.deque[Outgoing] = collections.deque()
        # The newest camera frame: a newer one replaces it (counted), since a late picture is a wrong picture.
        self._video: Outgoing | None = None
        self._ready = trio.Event()
        self.audio_dropped = 0
        self.video_dropped = 0

    def put_audio(self, pcm: bytes) -> bool:
        """Queue audio; False if the oldest chunk had to be dropped to make room."""
        full = len(self._audio) == OUTBOX_AUDIO
        if full:
            self.audio_dropped += 1
        self._audio.append(Outgoing(AUDIO, pcm))
        self._ready.set()
        return not full

    def put_video(self, jpeg: bytes) -> None:
        """Queue a camera frame in the one-picture slot (newest wins)."""
        self.video_dropped += self._video is not None
        self._video = Outgoing(VIDEO, jpeg)
        self._ready.set()

    def drop_video(self) -> None:
        """The connection ended: a picture is not kept for the next one (it would be stale)."""
        self.video_dropped += self._video is not None
        self._video = None

    def put_turn(self, text: str) -> bool:
        """Queue a typed turn; False (nothing queued) if OUTBOX_TURNS are already waiting."""
        if len(self._turns) >= OUTBOX_TURNS:
            return False
        self._turns.append(Outgoing(TEXT, text))
        self._ready.set()
        return True

    def put_tool_responses(self, responses: list) -> None:
        """Tool responses jump the queue: a blocking call holds the model's answer until they arrive."""
        self._turns.appendleft(Outgoing(TOOL, responses))
        self._ready.set()

    def cancel_tool_responses(self, ids: set[str]) -> int:
        """Drop not-yet-sent responses to calls the server cancelled (tool_call_cancellation); returns how many."""
        cancelled = 0
        for item in [item for item in self._turns if item.kind == TOOL]:
            kept = [response for response in item.payload if response.id not in ids]
            cancelled += len(item.payload) - len(kept)
            if kept:
                item.payload = kept
            else:
                self._turns.remove(item)
        return cancelled

    async def next(self) -> Outgoing:
        """The item to send next (turns and tool responses, then a picture, then audio), left in place until
        :meth:`sent`. A picture goes before audio so what the user says next is heard with it in view."""
        while not (self._turns or self._video or self._audio):
            self._ready = trio.Event()
            await self._ready.wait()
        if self._turns:
            return self._turns[0]
        return self._video if self._video is not None else self._audio[0]

    def sent(self, item: Outgoing) -> None:
        # Remove what was sent, not what is in front now: a tool response may have jumped ahead of it meanwhile
        # (and audio may already have been evicted by maxlen while it was being sent).
        if item.kind == VIDEO:
            if self._video is item:
                self._video = None
            return
        queue = self._audio if item.kind == AUDIO else self._turns
        try:
            queue.remove(item)
        except ValueError:
            pass
