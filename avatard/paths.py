"""Where the control socket lives by default: shared by ``avatard`` and ``avatarctl``.

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
