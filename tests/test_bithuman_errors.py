"""avatard.renderers.bithuman_errors: the offline model-file check and the SDK-error classifier.

Against the real SDK, offline: its verdict on garbage model files and its exception classes. The module
is pure (no trio, no SDK import), which the last test checks.
"""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import bithuman
import numpy as np
import pytest

import avatard.renderers.bithuman_errors as bithuman_errors
from avatard.errors import ConfigError, RendererError, RendererFailed
from avatard.renderers.bithuman_errors import check_model_file, classify, startup_error

SECRET = "bh-secret-5e3a9c"


@pytest.fixture
def model(tmp) -> str:
    """A file that passes check_model_file (an IMX container header)."""
    path = tmp / "avatar.imx"
    path.write_bytes(b"IMX\x00" + struct.pack("<HH", 2, 0) + bytes(100))
    return str(path)

# -- model files and errors, against the real SDK ----------------------------------------------------

def test_check_model_file_rejects_only_what_the_real_sdk_rejects(tmp):
    garbage = tmp / "garbage.imx"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp / "empty.imx"
    empty.write_bytes(b"")
    text = tmp / "notes.imx"
    text.write_text("this is not an avatar\n" * 40)
    for path in (garbage, empty, text):
        with pytest.raises(ConfigError, match="--model: .* is not a bitHuman .imx model"):
            check_model_file(str(path))
        with pytest.raises(bithuman.InvalidAvatar):  # the SDK's public verdict, offline
            bithuman.open(str(path))
        # What create() does after authenticating (its loader): the same verdict as an SDK error,
        # which the adapter would turn into the same one-line ConfigError.
        with pytest.raises(bithuman.ModelLoadError) as caught:
            bithuman.AsyncBithuman()._load_fixture_blocking(str(path))
        error = startup_error(caught.value, model_path=str(path), secret=SECRET)
        assert isinstance(error, ConfigError) and str(error).startswith(f"--model: bitHuman cannot use {path}: [model_load_failed]")


def test_check_model_file_accepts_imx_and_tar_containers(tmp, model):
    check_model_file(model)
    import tarfile
    tar = tmp / "old.imx"
    with tarfile.open(tar, "w") as archive:
        archive.add(model, arcname="manifest.json")
    check_model_file(str(tar))


@pytest.mark.parametrize("exc, kind", [
    (bithuman.ModelNotFoundError("Essence model not found: /x.imx"), "model"),
    (bithuman.ModelLoadError("failed to load .imx"), "model"),
    (bithuman.ModelSecurityError("integrity"), "model"),
    (bithuman.InvalidAvatar("that is not a usable avatar"), "model"),
    (bithuman.NotSupported("cannot run here"), "model"),
    (bithuman.AccountStatusError("this account has no credits remaining"), "refused"),
    (bithuman.TokenExpiredError("expired"), "refused"),
    (bithuman.TokenValidationError("bad signature"), "refused"),
    (bithuman.NotAuthorised("the key is invalid"), "refused"),
    (bithuman.TokenRequestError("could not request a token"), "unreachable"),
    (bithuman.Failed("transient"), "unreachable"),
    (RuntimeError("auth_authenticate: curl_easy_perform: Couldn't resolve host name"), "unreachable"),
    (RuntimeError("auth_authenticate: curl_easy_perform: Couldn't connect to server"), "unreachable"),
    (RuntimeError("auth_authenticate: HTTP 401 this credential was REFUSED by the service"), "refused"),
    (ConnectionResetError("peer reset"), "unreachable"),
    (RuntimeError("be_fixture_load: status=3"), "failed"),
    (ValueError("odd"), "failed"),
])
def test_classify_sdk_errors(exc, kind):
    assert classify(exc) == kind


def test_startup_errors_are_one_line_without_the_secret():
    refused = startup_error(bithuman.AccountStatusError(f"secret {SECRET} was rejected\nby the service"), model_path="m.imx", secret=SECRET)
    assert type(refused) is RendererError
    assert str(refused).startswith("bitHuman refused the API secret (--api-secret / BITHUMAN_API_SECRET): [account_status_invalid]")
    assert SECRET not in str(refused) and "\n" not in str(refused)
    unreachable = startup_error(RuntimeError("auth_authenticate: curl_easy_perform: Couldn't resolve host name"),
                                model_path="m.imx", secret=SECRET)
    assert isinstance(unreachable, RendererFailed) and "cannot reach bitHuman" in str(unreachable)
    assert isinstance(startup_error(KeyError("x"), model_path="m.imx", secret=None), RendererFailed)


def test_the_classifier_is_pure():
    """No trio, no SDK, no numpy: it must be importable and testable without the renderer's machinery."""
    tree = ast.parse(Path(bithuman_errors.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    relative = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
    assert imported <= {"__future__", "re"}, imported
    assert relative == {"errors"}, relative
