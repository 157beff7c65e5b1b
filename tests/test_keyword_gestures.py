import json

import pytest

from avatard.brains.keyword_gestures import KeywordGestures, load_keywords
from avatard.errors import ConfigError


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_whole_words_only_case_insensitive():
    k = KeywordGestures(clock=Clock())
    assert k.feed("this is it, and nothing shipped ") == []
    assert k.feed("Hello there! ") == ["mini_wave_hello"]


def test_cooldown_per_gesture():
    clock = Clock()
    k = KeywordGestures(cooldown=3.0, clock=clock)
    assert k.feed("hello hello ") == ["mini_wave_hello"]
    clock.now += 2.9
    assert k.feed("hi again, thanks ") == ["thumbs_up"]
    clock.now += 0.2
    assert k.feed("hey ") == ["mini_wave_hello"]


def test_words_split_across_deltas():
    k = KeywordGestures(clock=Clock())
    assert k.feed("that is so fun") == []
    assert k.feed("ny") == []
    assert k.end() == ["laugh_react"]
    assert k.feed("hel") == [] and k.feed("lo, friend") == ["mini_wave_hello"]


def test_gestures_file_extend_and_replace(tmp_path):
    extend = tmp_path / "g.json"
    extend.write_text(json.dumps({"mode": "extend", "keywords": {"nod_agree": ["sure"], "spin": ["wow"]}}))
    merged = load_keywords(str(extend))
    assert "sure" in merged["nod_agree"] and "yes" in merged["nod_agree"] and merged["spin"] == ("wow",)
    replace = tmp_path / "g.toml"
    replace.write_text('mode = "replace"\n[keywords]\nthumbs_up = ["nice"]\n')
    assert load_keywords(str(replace)) == {"thumbs_up": ("nice",)}
    bad = tmp_path / "bad.json"
    bad.write_text('{"keywords": {"x": "notalist"}}')
    with pytest.raises(ConfigError, match="--gestures-file"):
        load_keywords(str(bad))
