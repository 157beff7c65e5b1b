"""Offline voice: text in, 16 kHz mono int16 speech out, via espeak-ng.

Why ctypes against espeak-ng: the shared library and its voice data ship inside the
`espeakng-loader` wheel, so there is no apt step and no subprocess per utterance, and the
legacy ``speak_lib.h`` API we need is six calls. The constants below are copied from that
header (API revision 12).

espeak-ng keeps one global synthesizer (voice, parameters, callback) and is not thread-safe,
so the library is initialised once, lazily, and every use holds ``_lock``. `synthesize` blocks;
call it from `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import ctypes
import logging
import threading

import attrs
import numpy as np
import soxr

from ..constants import RATE
from ..errors import TtsError

logger = logging.getLogger("avatard.tts")

# espeakRATE_MINIMUM / espeakRATE_MAXIMUM from speak_lib.h; outside them espeak clamps silently.
MIN_WORDS_PER_MINUTE = 80
MAX_WORDS_PER_MINUTE = 450

_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Synth returns only after the callback has seen every sample
_BUFFER_MS = 0  # callback chunk length; 0 means espeak's default of 60 ms
_INITIALIZE_DONT_EXIT = 0x8000  # return -1 instead of calling exit() if the data dir is unusable
_POS_CHARACTER = 1
_CHARS_UTF8 = 1  # plain UTF-8: no espeakSSML or espeakPHONEMES, so text cannot inject markup
_PARAM_RATE = 1  # espeak_PARAMETER espeakRATE, in words per minute
_EE_OK = 0

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Voice(ctypes.Structure):
    """Leading fields of espeak_VOICE; we only read ``identifier`` through a pointer."""

    _fields_ = [(name, ctypes.c_char_p) for name in ("name", "languages", "identifier")]



@attrs.define
class _Espeak:
    """The initialised library and the buffer its synth callback appends PCM bytes to."""

    lib: ctypes.CDLL
    native_rate: int
    chunks: list[bytes]
    callback: object  # keeps the ctypes thunk alive for as long as espeak may call it

    @classmethod
    def load(cls) -> _Espeak:
        try:
            import espeakng_loader

            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data_path = espeakng_loader.get_data_path().encode()
        except (ImportError, OSError) as exc:
            raise TtsError(f"cannot load espeak-ng from espeakng-loader: {exc}") from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        native_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data_path, _INITIALIZE_DONT_EXIT
        )
        if native_rate <= 0:
            raise TtsError(f"espeak_Initialize failed for data dir {data_path.decode()!r}")
        chunks: list[bytes] = []

        def on_audio(wav, num_samples, _events):  # wav is NULL at the end of synthesis
            if wav and num_samples > 0:
                chunks.append(ctypes.string_at(wav, num_samples * 2))
            return 0  # 0 = continue synthesis

        callback = _SynthCallback(on_audio)
        lib.espeak_SetSynthCallback(callback)
        logger.info("espeak-ng initialised, native rate %d Hz", native_rate)
        return cls(lib, native_rate, chunks, callback)


_lock = threading.Lock()  # guards _engine and all of espeak's global state
_engine: _Espeak | None = None


def _get_engine() -> _Espeak:
    global _engine
    if _engine is None:
        _engine = _Espeak.load()
    return _engine


def synthesize(text: str, *, voice: str = "en-us", words_per_minute: int = 165) -> np.ndarray:
    """Speak ``text`` and return int16 mono PCM at `RATE`; empty text gives an empty array.

    Output is repeatable only for voices without pitch flutter (e.g. ``en-us+Storm``): the
    flutter index in espeak's wavegen.c is a C static advanced by every sample ever generated,
    so with the default voices the same text can differ by a few samples from call to call.
    """
    if not MIN_WORDS_PER_MINUTE <= words_per_minute <= MAX_WORDS_PER_MINUTE:
        raise TtsError(f"words_per_minute={words_per_minute} outside "
                       f"{MIN_WORDS_PER_MINUTE}..{MAX_WORDS_PER_MINUTE}")
    text = text.replace("\0", " ").strip()  # a NUL would end the C string early
    if not text:
        return np.zeros(0, dtype=np.int16)
    # A lone surrogate ("\ud800" is valid in a JSON string) has no UTF-8 form; espeak gets "?" for it.
    encoded = text.encode("utf-8", "replace")
    with _lock:
        engine = _get_engine()
        if not voice or engine.lib.espeak_SetVoiceByName(voice.encode("utf-8")) != _EE_OK:
            raise TtsError(f"unknown espeak voice {voice!r}; see avatard.brains.tts.voices()")
        engine.lib.espeak_SetParameter(_PARAM_RATE, words_per_minute, 0)
        engine.chunks.clear()
        err = engine.lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0,
                                      _CHARS_UTF8, None, None)
        engine.lib.espeak_Synchronize()
        pcm = b"".join(engine.chunks)
        engine.chunks.clear()
    if err != _EE_OK:
        raise TtsError(f"espeak_Synth failed with error {err} for {len(text)} characters")
    native = np.frombuffer(pcm, dtype=np.int16)
    if native.size == 0:
        return np.zeros(0, dtype=np.int16)
    # Resampling is pure and needs no lock, so it runs outside it.
    return soxr.resample(native, engine.native_rate, RATE, quality="HQ")


def voices() -> list[str]:
    """Voice names `synthesize` accepts (``en-us``, ``de``); append ``+variant`` for variants."""
    with _lock:
        listing = _get_engine().lib.espeak_ListVoices(None)
        names = set()
        i = 0
        while listing[i]:  # NULL-terminated array of espeak_VOICE pointers
            names.add(listing[i].contents.identifier.decode().rsplit("/", 1)[-1].lower())
            i += 1
    return sorted(names)
