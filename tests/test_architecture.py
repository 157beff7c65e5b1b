"""The package layout is the architecture: import-linter's contracts (pyproject.toml) hold, and they bite."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first, so a copy of the packages in ``cwd`` wins over the installed (editable) ones.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)}, timeout=120)


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def copy_project(tmp_path: Path) -> Path:
    for name in ("avatard", "avatarctl"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_a_brain_that_imports_the_server_breaks_the_layers(tmp_path):
    project = copy_project(tmp_path)
    with open(project / "avatard" / "brains" / "local.py", "a") as f:
        f.write("\nfrom ..server import websocket  # forbidden: a brain reaching into a front end\n")
    result = lint_imports(project)
    assert result.returncode == 1
    assert "avatard.brains.local -> avatard.server.websocket" in result.stdout
    assert "2 kept, 1 broken" in result.stdout


def test_a_protocol_module_that_imports_trio_breaks_purity(tmp_path):
    project = copy_project(tmp_path)
    with open(project / "avatard" / "protocol" / "media.py", "a") as f:
        f.write("\nimport trio  # forbidden: the wire protocol does no I/O\n")
    result = lint_imports(project)
    assert result.returncode == 1
    assert "avatard.protocol.media -> trio" in result.stdout
