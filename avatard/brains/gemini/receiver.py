"""Every field of every Live server message, handled in one place.

Since the 3.x models a message may carry several fields and several parts at once (model audio together with its
transcript, a turn's end with its usage), and some carry none that matter to us (only ``usage_metadata``, or a
``voice_activity`` signal): so each field is checked on its own, in the order a conversation needs them, and a
message with nothing we use is simply counted as received (gemini_live_2026.md, "one server message" and
"empty messages").
"""

from __future__ import annotations

import logging
import math
import re

import trio

from . import tools
from .failures import retryable_errors
from .generations import Generation
from .outbox import Outbox
from .speech import ModelSpeech
from .transcripts import Transcripts

logger = logging.getLogger("avatard.brain.gemini.receiver")

# After a goAway, stop finishing the current answer this long before the server's deadline, so the
# new connection is up before the old one is cut (and its resumption handle is the newest we have).
GO_AWAY_MARGIN = 1.0
GO_AWAY = "go_away"


def seconds(duration: str | None) -> float:
    """A protobuf Duration in JSON ("2s", "0.5s") as seconds; unknown forms count as no time at all."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)s\s*", duration or "")
    return float(match.group(1)) if match else 0.0


class Receiver:
    """Turns server messages into speech, transcripts, gestures, tool responses and counters.

    Lives as long as the brain: the resumption handle, token counts and the open turn carry across connections.
    """

    def __init__(self, *, generation: Generation, speech: ModelSpeech, transcripts: Transcripts, outbox: Outbox,
                 controls, name: str) -> None:
        self._generation = generation
        self._speech = speech
        self._transcripts = transcripts
        self._outbox = outbox
        self._controls = controls
        self._name = name
        self.handle: str | None = None  # the newest session-resumption handle
        self.turn_open = False  # model content seen since the last turnComplete
        # Live sessions are billed by tokens; every usage_metadata reports the response it comes with (live-guide
        # "Token count"), so they are summed.
        self.prompt_tokens = 0
        self.response_tokens = 0

    async def receive(self, messages) -> object:
        """Handle messages until the connection ends; return why (an exception, or GO_AWAY).

        After a ``goAway`` the old connection still works for ``time_left``: an answer in progress is
        finished on it (up to :data:`GO_AWAY_MARGIN` before the deadline) rather than cut, then we resume.
        """
        draining = trio.CancelScope()
        try:
            with draining:
                async for message in messages:
                    if message.go_away is not None:
                        time_left = message.go_away.time_left
                        if not self.turn_open:
                            logger.info("goAway (time left %s): resuming on a new connection now", time_left)
                            return GO_AWAY
                        logger.info("goAway (time left %s): finishing this answer first", time_left)
                        draining.deadline = trio.current_time() + max(0.0, seconds(time_left) - GO_AWAY_MARGIN)
                    await self.handle_message(message)
                    if draining.deadline != math.inf and not self.turn_open:
                        return GO_AWAY
        except retryable_errors() as exc:
            return exc
        if draining.cancelled_caught:
            return GO_AWAY
        return "connection ended"

    async def handle_message(self, message) -> None:
        update = message.session_resumption_update
        if update is not None and update.resumable and update.new_handle:
            self.handle = update.new_handle
        if message.usage_metadata is not None:
            self.prompt_tokens += message.usage_metadata.prompt_token_count or 0
            self.response_tokens += message.usage_metadata.response_token_count or 0
        if message.tool_call_cancellation is not None:
            ids = set(message.tool_call_cancellation.ids or ())
            # A gesture already played cannot be taken back; its answer, if still queued, is no longer wanted.
            dropped = self._outbox.cancel_tool_responses(ids)
            logger.info("the server cancelled tool calls %s (%d unsent responses dropped)", sorted(ids), dropped)
        if message.tool_call is not None:
            responses = tools.answer(self._generation, message.tool_call, self.gesture)
            if responses:
                self._outbox.put_tool_responses(responses)
        if message.server_content is not None:
            await self._content(message.server_content)

    def gesture(self, name: str) -> None:
        self._controls.gesture(name, self._name)

    async def _content(self, content) -> None:
        if content.interrupted:
            if self._speech.discarding:
                # The answer was already cut here (an operator, a client, the local microphone) and the model went
                # on generating it until new input interrupted it: the same interrupt, not a second one.
                logger.info("the model reports the interruption of an answer already cut here")
            else:
                logger.info("the model reports barge-in")
                self._controls.interrupt(self._name)
        if content.input_transcription is not None and content.input_transcription.text:
            self._transcripts.heard(content.input_transcription.text)
        if content.model_turn is not None:
            self._transcripts.finish_user()
            self.turn_open = True
            for part in content.model_turn.parts or ():
                if self._speech.is_audio(part.inline_data):
                    await self._speech.play(part.inline_data)
        if content.output_transcription is not None and content.output_transcription.text:
            self.turn_open = True
            self._transcripts.said(content.output_transcription.text, discarding=self._speech.discarding)
        if content.generation_complete or content.turn_complete:  # (a second flush finds nothing held back)
            await self._speech.flush()
        if content.turn_complete:
            self.end_turn(cut=False)

    def interrupt(self) -> None:
        self._speech.cut(discard=self.turn_open)

    def end_turn(self, *, cut: bool) -> None:
        self._transcripts.end_turn(interrupted=cut or self._speech.discarding)
        self.turn_open = False
        self._speech.end_turn()
