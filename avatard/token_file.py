"""The server token on disk: read from ``--token-file``, or generated once and kept in the state directory.

Secure by default, as notebook servers learned to be: a server listening beyond loopback without a
token gets a random one, created once so that bookmarks and Prometheus configs survive restarts.
The file is created owner-only (0600, in a 0700 directory) and never overwritten.
"""

from __future__ import annotations

import os
import secrets

from .errors import ConfigError

TOKEN_FILE_NAME = "token"
TOKEN_BYTES = 24  # 192 bits, URL-safe: what jupyter uses; guessing it over a LAN is hopeless
MAX_TOKEN_FILE_BYTES = 4096  # a token, not a document: a wrong path (a log, a disk image) fails fast


def read_token_file(path: str, flag: str = "--token-file") -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    token = data.decode("utf-8", "replace").strip()
    if len(data) > MAX_TOKEN_FILE_BYTES or not token or any(c.isspace() for c in token):
        raise ConfigError(f"{flag}: {path} must hold one token (no spaces, under {MAX_TOKEN_FILE_BYTES} bytes)")
    return token


def load_or_create(directory: str) -> tuple[str, str]:
    """The token kept in ``directory`` (created if missing) and the file's path."""
    path = os.path.join(directory, TOKEN_FILE_NAME)
    if not os.path.exists(path):
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another avatard won the race; read its token
        except OSError as exc:
            raise ConfigError(f"--token: cannot create a token in {directory} ({exc.strerror}); "
                              "give --token-file, or --no-auth to serve without one") from None
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
    return read_token_file(path, "--token"), path
