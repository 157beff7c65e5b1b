"""Keyword gestures (the seed's "Dynamics"): words the avatar says trigger matching gestures.

Unlike the reference, which matches substrings (so "this" fires "hi"), words are matched whole and
case-insensitively. Each gesture has a cooldown so a chatty answer does not wave ten times. Text comes
in as transcript deltas that may split words ("hel" + "lo"), so the last, possibly incomplete word is
held back until more text or :meth:`end` arrives.
"""

from __future__ import annotations

import json
import logging
import re
import time

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..errors import ConfigError, Refused

logger = logging.getLogger("avatard.keyword_gestures")

DEFAULT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "mini_wave_hello": ("hello", "hi", "hey", "bye", "wave"),
    "laugh_react": ("laugh", "haha", "funny", "lol"),
    "nod_agree": ("yes", "yeah", "agree", "nod"),
    "heart_gesture": ("love", "heart", "kiss"),
    "thumbs_up": ("thanks", "great", "awesome"),
}
DEFAULT_COOLDOWN = 3.0  # seconds between two firings of the same gesture
_WORD = re.compile(r"[\w']+")


class KeywordGestures:
    def __init__(self, keywords: dict[str, tuple[str, ...]] = DEFAULT_KEYWORDS, cooldown: float = DEFAULT_COOLDOWN,
                 clock=time.monotonic) -> None:
        self._gesture_of = {word.lower(): gesture for gesture, words in keywords.items() for word in words}
        self._cooldown = cooldown
        self._clock = clock
        self._last_fired: dict[str, float] = {}
        self._tail = ""

    def feed(self, delta: str) -> list[str]:
        """Gestures to fire for the complete words in ``delta`` (plus any word it completes)."""
        text = self._tail + delta
        cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
        ends_in_word = bool(text) and (_WORD.fullmatch(text[-1]) is not None)
        if ends_in_word:
            self._tail, text = text[cut + 1:], text[:cut + 1]
        else:
            self._tail = ""
        return self._match(text)

    def end(self) -> list[str]:
        """The turn is over: the held-back word is complete."""
        text, self._tail = self._tail, ""
        return self._match(text)

    def _match(self, text: str) -> list[str]:
        fired = []
        now = self._clock()
        for word in _WORD.findall(text.lower()):
            gesture = self._gesture_of.get(word)
            if gesture is None or gesture in fired:
                continue
            if now - self._last_fired.get(gesture, -1e9) < self._cooldown:
                continue
            self._last_fired[gesture] = now
            fired.append(gesture)
        return fired


def fire(names: list[str], trigger) -> None:
    """Call ``trigger(name)`` for each gesture; a name the renderer does not know is logged, not fatal."""
    for name in names:
        try:
            trigger(name)
        except Refused as exc:  # the hub refuses unknown names (a user keyword map may name one)
            logger.warning("keyword gesture %s: %s", name, exc)


def load_keywords(path: str) -> dict[str, tuple[str, ...]]:
    """Read ``--gestures-file`` (JSON or TOML): ``{"mode": "extend"|"replace", "keywords": {gesture: [words]}}``."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        data = tomllib.loads(raw.decode()) if path.endswith(".toml") else json.loads(raw)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"--gestures-file: cannot read {path}: {exc}") from None
    mode = data.get("mode", "extend") if isinstance(data, dict) else None
    keywords = data.get("keywords") if isinstance(data, dict) else None
    if mode not in ("extend", "replace") or not isinstance(keywords, dict) or not all(
            isinstance(words, list) and all(isinstance(w, str) for w in words) for words in keywords.values()):
        raise ConfigError(f'--gestures-file: {path} must hold {{"mode": "extend"|"replace", "keywords": {{gesture: [words]}}}}')
    merged = {} if mode == "replace" else {g: tuple(w) for g, w in DEFAULT_KEYWORDS.items()}
    for gesture, words in keywords.items():
        merged[gesture] = tuple(dict.fromkeys((*merged.get(gesture, ()), *words)))
    return merged
