# avatard in a container: server mode (HTTP page + WebSocket on 8765). No window, no sound devices:
# browsers are the speakers and microphones. See README.md, "Docker".
FROM python:3.11-slim

# Runtime libraries only. opencv-python (a dependency) is OpenCV's GUI build, which links libGL and GLib
# even when no window is opened; soundfile wants libsndfile. espeak-ng, onnxruntime and FFmpeg ship
# inside their wheels. No compilers: every dependency installs from a wheel.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 libgl1 libglib2.0-0 opencv-data \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY avatard ./avatard
COPY avatarctl ./avatarctl
RUN pip install .

# Its own unprivileged user. /run/avatard holds the control socket; /app/models is where compose mounts
# the bitHuman models (read-only); the home directory holds bitHuman's model cache (~/.cache/bithuman).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/avatard --shell /usr/sbin/nologin avatard \
    && mkdir -p /run/avatard /app/models \
    && chown avatard:avatard /run/avatard
USER avatard

# One fixed control socket for the daemon (--control-socket) and for avatarctl (--socket): the health check
# and `docker exec <container> avatarctl ...` find the daemon without flags.
ENV AVATARD_SOCKET=/run/avatard/avatard.sock

EXPOSE 8765

# avatarctl exits 0 when the daemon answers, 3 when it does not (it waits 10 s for a reply, so the timeout is
# longer and its message lands in the health log). The start period covers loading a bitHuman model and its
# licence check; the built-in avatar is ready in about a second.
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 CMD ["avatarctl", "status"]

# SIGTERM (docker stop): clients are told, the socket is removed, and the process exits within 2 s.
STOPSIGNAL SIGTERM
CMD ["avatard", "--server"]
