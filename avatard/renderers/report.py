"""What every renderer reports in ``avatarctl status`` (the keys of ``Renderer.status()``), written once."""

from __future__ import annotations


def renderer_status(renderer, *, fallback_reason: str | None = None, **extra) -> dict:
    return {"renderer": renderer.name, "renderer_fallback": fallback_reason,
            "size": f"{renderer.width}x{renderer.height}", "fps": renderer.fps, "speaking": renderer.speaking,
            "frames_rendered": renderer.frames_rendered, "frames_dropped": renderer.frames_dropped,
            "ticks_skipped": renderer.ticks_skipped, **extra}
