"""The offline voice: speak text with espeak-ng into the renderer, cancellably.

Used by the local brain for every answer and by the Gemini brain for ``avatarctl say`` (verbatim
speech with no model turn: the operator's words, not the model's).
"""

from __future__ import annotations

import re

import numpy as np
import trio

from ..constants import RATE
from . import tts

# Speech is handed to the renderer in slices so an interrupt never waits behind a long sentence.
PUSH_SLICE = RATE // 5
# The first phrase is synthesized on its own so the first word is out after a few ms of espeak (its time
# grows with the text: ~2 ms for a short phrase, ~11 ms for 110 characters on a 2-core box); the rest is
# synthesized while the first phrase plays. A clause boundary within FIRST_PHRASE_CHARS is the split
# point (espeak phrases it naturally); failing that, a word boundary; shorter texts are not split.
FIRST_PHRASE_CHARS = 60
_CLAUSE_END = re.compile(r"[,.;:!?](?=\s)")


def first_phrase(text: str) -> tuple[str, str]:
    """``(first, rest)``: the start of ``text`` worth synthesizing on its own, and what follows it."""
    if len(text) <= FIRST_PHRASE_CHARS:
        return text, ""
    clause = _CLAUSE_END.search(text, 0, FIRST_PHRASE_CHARS)
    cut = clause.end() if clause else text.rfind(" ", 0, FIRST_PHRASE_CHARS)
    if cut <= 0:
        return text, ""
    return text[:cut].strip(), text[cut:].strip()


async def synthesize(text: str) -> np.ndarray:
    """espeak-ng in a worker thread (it blocks for a few ms per sentence, ~0.2 s for a long turn)."""
    samples = await trio.to_thread.run_sync(tts.synthesize, text)
    # A thread cannot be cancelled: trio hands back its result and keeps the cancellation pending until
    # the next checkpoint. play() may push a whole buffer without one, so an interrupt that came during
    # synthesis is taken here, before a single sample reaches the renderer.
    await trio.lowlevel.checkpoint()
    return samples


async def play(renderer, samples: np.ndarray, *, end_of_turn: bool = True) -> bool:
    """Push ``samples`` to the renderer (and flush at the end of the turn); False if an interrupt discarded them."""
    for start in range(0, len(samples), PUSH_SLICE):
        if not await renderer.push_audio(samples[start:start + PUSH_SLICE]):
            return False
    if end_of_turn:
        renderer.flush()
    return True


async def speak(renderer, text: str, on_first_audio) -> bool:
    """Say ``text``: the first phrase first, then the rest. ``on_first_audio()`` runs once the first audio
    exists (latency, transcript), before it is pushed. False if interrupted, or there was nothing to say."""
    first, rest = first_phrase(text)
    samples = await synthesize(first)
    if not len(samples):
        return False
    on_first_audio()
    if not await play(renderer, samples, end_of_turn=not rest):
        return False
    return await play(renderer, await synthesize(rest)) if rest else True
