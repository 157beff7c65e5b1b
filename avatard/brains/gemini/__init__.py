"""The Gemini Live brain, in parts with one job each (see :mod:`.brain`)."""

from .brain import GeminiBrain

__all__ = ["GeminiBrain"]
