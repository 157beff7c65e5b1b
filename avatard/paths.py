"""Where the control socket and the state live by default: shared by ``avatard`` and ``avatarctl``.

Kept free of heavy imports so ``avatarctl`` starts fast.
"""

from __future__ import annotations

import os


def default_control_socket(environ: dict[str, str] | None = None) -> str:
    """``$RUNTIME_DIRECTORY`` (systemd), else ``$XDG_RUNTIME_DIR``, else ``/tmp/avatard-$UID.sock``."""
    env = os.environ if environ is None else environ
    for var in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        value = env.get(var)
        if value:
            # systemd may list several runtime directories separated by ':'; ours is the first.
            return os.path.join(value.split(":")[0], "avatard.sock")
    return f"/tmp/avatard-{os.getuid()}.sock"


def default_state_directory(environ: dict[str, str] | None = None) -> str:
    """``$STATE_DIRECTORY`` (systemd's StateDirectory=), else ``$XDG_STATE_HOME/avatard``, else
    ``~/.local/state/avatard``: where the generated server token is kept across restarts."""
    env = os.environ if environ is None else environ
    if env.get("STATE_DIRECTORY"):
        return env["STATE_DIRECTORY"].split(":")[0]
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "avatard")
