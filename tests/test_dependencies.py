"""Every package the daemon and the CLI import is declared in pyproject.toml, not merely present because
something else pulled it in (the brief: "Declare every package you import"). ``av`` once came only through
bithuman; this test found ``outcome`` coming only through trio, and ``websockets`` and ``google-auth`` only
through google-genai."""

import ast
import importlib.metadata
import importlib.util
import os
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli is a declared dependency there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
OWN = {"avatard", "avatarctl"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def declared_distributions() -> set[str]:
    """The dependencies, plus the ``aec`` extra (imported only when the echo canceller is asked for)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["aec"]
    return {_canonical(re.match(r"[A-Za-z0-9._-]+", requirement)[0]) for requirement in requirements}


def imported_modules(*packages: str) -> dict[str, str]:
    """Modules imported anywhere in ``packages`` (absolute imports only), dotted -> one file importing it."""
    found = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    # ``from google import genai``: the name may be a submodule, and a namespace needs it
                    names = [f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*"]
                else:
                    continue
                for name in names:
                    found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def owner(dotted: str, providers: dict[str, list[str]]) -> str | None:
    """The installed distribution a module comes from, or None if it is not installed. A top-level name that
    several distributions share (the ``google`` namespace: google-genai, google-auth) is settled by which of
    them holds the module's file, looking through namespaces without importing anything else."""
    candidates = providers.get(dotted.partition(".")[0], [])
    if len(candidates) <= 1:
        return _canonical(candidates[0]) if candidates else None
    parts = dotted.split(".")
    for depth in range(1, len(parts) + 1):
        spec = importlib.util.find_spec(".".join(parts[:depth]))
        if spec is None:
            return None
        if spec.origin not in (None, "namespace"):
            origin = os.path.normpath(spec.origin)
            for name in candidates:
                dist = importlib.metadata.distribution(name)
                if any(os.path.normpath(dist.locate_file(file)) == origin for file in dist.files or ()):
                    return _canonical(name)
            return None
    return None


def undeclared(modules: dict[str, str], declared: set[str]) -> list[str]:
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(modules.items()):
        top = module.partition(".")[0]
        if top in sys.stdlib_module_names or top in OWN or top == "__future__":
            continue
        # Not installed here: a conditional import for another Python (tomli on 3.10), declared under its own name.
        dist = owner(module, providers) or _canonical(top)
        if dist not in declared:
            missing.append(f"{module} (imported by {where}; from {dist})")
    return missing


def test_every_package_the_daemon_and_the_cli_import_is_declared():
    modules = imported_modules("avatard", "avatarctl")
    assert {"trio", "cv2", "google.genai", "outcome"} <= modules.keys(), "the scan finds the imports"
    assert undeclared(modules, declared_distributions()) == []


def test_an_import_that_only_arrives_through_another_package_is_caught():
    modules = {"outcome": "avatard/core/aio_bridge.py", "google.auth.exceptions": "avatard/brains/gemini/failures.py",
               "google.genai": "avatard/brains/gemini/client.py", "json": "avatard/app.py"}
    missing = undeclared(modules, declared_distributions() - {"outcome", "google-auth"})
    assert missing == ["google.auth.exceptions (imported by avatard/brains/gemini/failures.py; from google-auth)",
                       "outcome (imported by avatard/core/aio_bridge.py; from outcome)"]
