"""Strict tooling is part of the suite (STYLE.md rule 10): ruff and mypy --strict stay clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", "libs", "schemas", "domain", "services", "tools", "tests")
    assert done.returncode == 0, done.stdout[-4000:]


def test_mypy_strict_finds_nothing() -> None:
    done = _run("mypy", "libs", "schemas", "domain", "services", "tools")
    assert done.returncode == 0, done.stdout[-4000:]


def test_layers_hold() -> None:
    """import-linter's contracts ([tool.importlinter] in pyproject.toml): kernel (libs) ← schemas ← domain ←
    services ← tools, the CLI, catalog and operations above independent workers (docs/architecture.md)."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
