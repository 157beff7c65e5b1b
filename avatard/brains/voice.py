"""The offline voice: speak text with espeak-ng into the renderer, cancellably.

Used by the local brain for every answer and by the Gemini brain for ``avatarctl say`` (verbatim
speech with no model turn: the operator's words, not the model's).
"""

from __future__ import annotations

import numpy as np
import trio

from ..constants import RATE
from . import tts

# Speech is handed to the renderer in slices so an interrupt never waits behind a long sentence.
PUSH_SLICE = RATE // 5


async def synthesize(text: str) -> np.ndarray:
    """espeak-ng in a worker thread (it blocks for a few ms per sentence, ~0.2 s for a long turn)."""
    samples = await trio.to_thread.run_sync(tts.synthesize, text)
    # A thread cannot be cancelled: trio hands back its result and keeps the cancellation pending until
    # the next checkpoint. play() may push a whole buffer without one, so an interrupt that came during
    # synthesis is taken here, before a single sample reaches the renderer.
    await trio.lowlevel.checkpoint()
    return samples


async def play(renderer, samples: np.ndarray) -> bool:
    """Push ``samples`` to the renderer and flush; False if an interrupt discarded them on the way."""
    for start in range(0, len(samples), PUSH_SLICE):
        if not await renderer.push_audio(samples[start:start + PUSH_SLICE]):
            return False
    renderer.flush()
    return True
