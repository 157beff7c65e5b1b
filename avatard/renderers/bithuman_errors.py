"""What bitHuman's SDK errors mean for avatard: the offline model-file check and the error classifier.

Pure: no trio, no SDK import, no I/O beyond reading 512 bytes of the model file. The classifier reads an
exception's class *names* (not ``isinstance``), so it works on the real SDK's classes, on a stand-in's and
on a class the SDK has moved; the tests check every name in :data:`KIND_BY_CLASS` against the installed
package. :mod:`avatard.renderers.bithuman` turns the verdicts into avatard's errors:

* ``model`` -> ConfigError (exit 2): the operator must fix ``--model``;
* ``refused`` -> RendererError (exit 1): the operator must fix the API secret;
* ``unreachable`` -> retried at start-up, then RendererFailed (the built-in renderer takes over);
* ``failed`` -> RendererFailed.

Why offline first: the SDK's ``create()`` authenticates over the network *before* it reads the model, and
libessence reports network failures as a plain ``RuntimeError("auth_authenticate: curl_easy_perform:
Couldn't resolve host name")``; a garbage file would surface as a network or secret error.
:func:`check_model_file` rejects it first (the tests check that the SDK's own ``bithuman.open()`` rejects
every file it rejects).
"""

from __future__ import annotations

import re

from ..errors import ConfigError, RendererError, RendererFailed

# An .imx is either an "IMX\0" container or (older models) a POSIX tar archive; the SDK's loader
# (be_fixture_load) accepts exactly these two.
IMX_MAGIC = b"IMX\x00"
TAR_MAGIC_OFFSET, TAR_MAGIC = 257, b"ustar"
# A reason is one line in a log or a status reply; the SDK's messages are short, a traceback-like one is cut.
MAX_REASON_CHARS = 300

# What an SDK exception class means for us. classify() walks the exception's MRO, so the most specific
# class listed decides. By name rather than isinstance, so it also reads a stand-in's or a moved class.
KIND_BY_CLASS = {
    "TokenRequestError": "unreachable",  # the auth server could not be asked (the SDK says: retryable)
    "AccountStatusError": "refused", "TokenExpiredError": "refused", "TokenValidationError": "refused",
    "TokenError": "refused", "NotAuthorised": "refused",
    "ModelNotFoundError": "model", "ModelLoadError": "model", "ModelSecurityError": "model",
    "ModelError": "model", "InvalidAvatar": "model", "NotSupported": "model",
    "Failed": "unreachable",  # "transient, or our fault. Retry" (its _Unreachable subclass is the network)
    "ConnectionError": "unreachable", "TimeoutError": "unreachable", "OSError": "unreachable",
}
# libessence reports auth problems as RuntimeError text: curl failures first ("Connection refused" is
# the network, not a refusal), then the service's answers.
_UNREACHABLE_TEXT = re.compile(r"curl|cannot reach|could not be reached|resolve host|connect to server|timed? ?out", re.I)
_REFUSED_TEXT = re.compile(r"HTTP 40[123]\b|refused by the service|rejected|unauthori[sz]ed|no credits", re.I)


def check_model_file(path: str) -> None:
    """Raise ConfigError (naming ``--model``) unless ``path`` looks like a bitHuman .imx model.

    Offline and cheap (512 bytes): the SDK itself would authenticate over the network before it looked.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise ConfigError(f"--model: cannot read {path}: {exc.strerror}") from None
    if head.startswith(IMX_MAGIC) or head[TAR_MAGIC_OFFSET:TAR_MAGIC_OFFSET + len(TAR_MAGIC)] == TAR_MAGIC:
        return
    what = "the file is empty" if not head else "no IMX header and not a tar archive"
    raise ConfigError(f"--model: {path} is not a bitHuman .imx model ({what})")


def classify(exc: BaseException) -> str:
    """``model``, ``refused``, ``unreachable`` or ``failed``: what an SDK error means for the operator."""
    for cls in type(exc).__mro__:
        kind = KIND_BY_CLASS.get(cls.__name__)
        if kind is not None:
            return kind
    text = str(exc)
    if _UNREACHABLE_TEXT.search(text):
        return "unreachable"
    if _REFUSED_TEXT.search(text):
        return "refused"
    return "failed"


def describe(exc: BaseException, secret: str | None = None) -> str:
    """One line for a person: the SDK's own message (its classes prefix a ``[code]``), never the secret."""
    text = " ".join(str(exc).split())
    sdk_error = type(exc).__module__.startswith("bithuman") or isinstance(exc, RuntimeError)
    if not text or not sdk_error:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3] + "..."


def startup_error(exc: BaseException, *, model_path: str, secret: str | None) -> Exception:
    """The avatard error for an SDK failure before the first frame (see the module docstring)."""
    reason = describe(exc, secret)
    kind = classify(exc)
    if kind == "model":
        return ConfigError(f"--model: bitHuman cannot use {model_path}: {reason}")
    if kind == "refused":
        return RendererError(f"bitHuman refused the API secret (--api-secret / BITHUMAN_API_SECRET): {reason}")
    if kind == "unreachable":
        return RendererFailed(f"cannot reach bitHuman to check the API secret: {reason}")
    return RendererFailed(f"bitHuman failed to start: {reason}")
