"""Deployment files: what can be checked without a Docker engine.

The Dockerfile is parsed into its instructions (a small parser: continuations, comments, exec form); the
compose file is loaded as YAML; and the image's HEALTHCHECK command is run, exactly as written, against a
real daemon started with the image's CMD and ENV (only the socket directory and the port differ: the
image's /run/avatard and 8765 are not ours to take here).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# What the image may install with apt: runtime libraries of the wheels, nothing to build with.
ALLOWED_APT = {"libsndfile1", "libgl1", "libglib2.0-0"}
SEED_ENV = {"GOOGLE_API_KEY", "BITHUMAN_API_SECRET", "BITHUMAN_MODEL_PATH"}


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]``, continuation lines joined, comments and blank lines dropped."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(part, str) for part in value), arguments
    return value


def env_of(instructions) -> dict[str, str]:
    env = {}
    for keyword, arguments in instructions:
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def healthcheck(instructions) -> tuple[dict[str, str], list[str]]:
    [arguments] = [a for k, a in instructions if k == "HEALTHCHECK"]
    options, _, command = arguments.partition(" CMD ")
    parsed = dict(option.lstrip("-").split("=", 1) for option in options.split())
    return parsed, exec_form(command)


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def test_dockerfile_builds_a_slim_image_with_only_runtime_packages(dockerfile):
    keywords = [k for k, _ in dockerfile]
    assert dockerfile[0] == ("FROM", "python:3.11-slim")
    assert keywords.count("FROM") == 1
    runs = [a for k, a in dockerfile if k == "RUN"]
    [apt] = [r for r in runs if "apt-get install" in r]
    assert "--no-install-recommends" in apt and "rm -rf /var/lib/apt/lists/*" in apt
    packages = {word for word in apt.split("apt-get install", 1)[1].split("&&")[0].split() if not word.startswith("-")}
    assert packages and packages <= ALLOWED_APT, packages
    assert any(r.split() == ["pip", "install", "."] for r in runs)
    assert ("EXPOSE", "8765") in dockerfile


def test_dockerfile_runs_avatard_server_as_a_non_root_user(dockerfile):
    users = [a for k, a in dockerfile if k == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith(("root:", "0:"))
    user = users[-1]
    keywords = [k for k, _ in dockerfile]
    install = next(i for i, (k, a) in enumerate(dockerfile) if k == "RUN" and a.startswith("pip install"))
    assert keywords.index("USER") > install, "packages are installed as root, the daemon runs as the user"
    [cmd] = [a for k, a in dockerfile if k == "CMD"]
    assert exec_form(cmd) == ["avatard", "--server"]
    assert not any(k == "ENTRYPOINT" for k in keywords)
    # The user exists and owns the control socket's directory.
    runs = " && ".join(a for k, a in dockerfile if k == "RUN")
    assert "useradd" in runs and user in runs.split("useradd", 1)[1].split("&&")[0]
    socket_dir = os.path.dirname(env_of(dockerfile)["AVATARD_SOCKET"])
    assert f"mkdir -p {socket_dir}" in runs and f"chown {user}:{user} {socket_dir}" in runs


def test_healthcheck_uses_avatarctl_status_with_the_fixed_socket(dockerfile):
    options, command = healthcheck(dockerfile)
    assert command == ["avatarctl", "status"]
    assert env_of(dockerfile)["AVATARD_SOCKET"].startswith("/run/avatard/")  # read by avatard and avatarctl alike
    assert set(options) == {"interval", "timeout", "start-period", "retries"}
    # Longer than avatarctl's own wait for a reply, so a stuck daemon is reported by avatarctl (in the health log).
    from avatarctl.cli import REPLY_TIMEOUT
    assert float(options["timeout"].rstrip("s")) > REPLY_TIMEOUT


def test_dockerignore_keeps_secrets_out_and_the_build_inputs_in():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/"))
                   or path.startswith(p.rstrip("/") + "/") for p in patterns)

    for secret in (".env", "models/avatar.imx", ".git/config", "tests/test_deploy.py", "avatard/__pycache__/x.pyc"):
        assert ignored(secret), secret
    for needed in ("pyproject.toml", "README.md", "avatard/app.py", "avatard/static/index.html", "avatarctl/cli.py"):
        assert not ignored(needed), needed


def test_compose_file_is_the_seeds_service():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    [(name, service)] = compose["services"].items()
    assert service["build"] == "."
    env = dict(item.split("=", 1) for item in service["environment"])
    assert set(env) == SEED_ENV
    assert env["BITHUMAN_MODEL_PATH"] == "/app/models/avatar.imx"
    assert env["GOOGLE_API_KEY"].startswith("${GOOGLE_API_KEY") and env["BITHUMAN_API_SECRET"].startswith("${BITHUMAN_API_SECRET")
    assert service["volumes"] == ["./models:/app/models:ro"]
    assert service["ports"] == ["8765:8765"]


def run_healthcheck(command: list[str], env: dict) -> tuple[int, float, str]:
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    return result.returncode, time.monotonic() - started, result.stdout + result.stderr


def test_healthcheck_command_against_a_daemon_started_like_the_image(dockerfile, tmp):
    options, command = healthcheck(dockerfile)
    [cmd] = [exec_form(a) for k, a in dockerfile if k == "CMD"]
    image_env = env_of(dockerfile)
    socket = tmp / "run" / os.path.basename(image_env["AVATARD_SOCKET"])
    socket.parent.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GEMINI_", "BITHUMAN_", "AVATARD_"))}
    env.update(image_env)
    env.update(AVATARD_SOCKET=str(socket), AVATARD_PORT="0", AVATARD_HOST="127.0.0.1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    timeout = float(options["timeout"].rstrip("s"))
    with open(tmp / "avatard.log", "wb") as log:
        daemon = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=tmp)
    try:
        deadline = time.monotonic() + 20  # well inside the image's start period
        while True:
            code, took, output = run_healthcheck(command, env)
            if code == 0 or time.monotonic() > deadline or daemon.poll() is not None:
                break
            time.sleep(0.2)
        assert code == 0, output + (tmp / "avatard.log").read_text()
        assert took < timeout and "renderer:" in output and "builtin" in output
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
    code, took, output = run_healthcheck(command, env)
    assert code == 3 and "avatard is not running at" in output
    assert took < timeout
