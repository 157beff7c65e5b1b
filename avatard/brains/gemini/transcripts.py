"""Transcript assembly: the user's and the model's words, from deltas to one final line per turn, published as
``transcription`` events; the model's words also drive the keyword gestures."""

from __future__ import annotations

from ...core.events import EventBus
from .. import keyword_gestures
from ..keyword_gestures import KeywordGestures


class Transcripts:
    def __init__(self, events: EventBus, keywords: KeywordGestures, gesture) -> None:
        self._events = events
        self._keywords = keywords
        self._gesture = gesture  # gesture(name): plays it through the daemon's controls
        self._user = ""
        self._assistant = ""
        self.turns = 0
        self.user_source = "unknown"  # who sent the audio being transcribed: user transcripts go back to it

    def typed(self, text: str, source: str) -> None:
        """A typed turn from ``source``: final at once."""
        self.turns += 1
        self._events.publish("transcription", role="user", text=text, is_final=True, source=source)
        self._events.publish("status", status="thinking")

    def heard(self, delta: str) -> None:
        self._user += delta
        self._events.publish("transcription", role="user", text=self._user.strip(), is_final=False,
                             source=self.user_source)

    def finish_user(self) -> None:
        """The model started answering: what was heard so far is the user's final turn."""
        if self._user.strip():
            self.typed(self._user.strip(), self.user_source)
        self._user = ""

    def said(self, delta: str, *, discarding: bool) -> None:
        self.finish_user()
        self._assistant += delta
        if not discarding:
            self._events.publish("transcription", role="assistant", text=self._assistant.strip(), is_final=False)
            keyword_gestures.fire(self._keywords.feed(delta), self._gesture)

    def end_turn(self, *, interrupted: bool) -> None:
        self.finish_user()
        if self._assistant.strip():
            self._events.publish("transcription", role="assistant", text=self._assistant.strip(), is_final=True,
                                 **({"interrupted": True} if interrupted else {}))
            keyword_gestures.fire(self._keywords.end(), self._gesture)
        self._assistant = ""
