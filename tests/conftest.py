"""Test-wide rules: tests marked ``root`` need root and Mininet.

Outside CI such a test is skipped with the reason; with ``CI=true`` in the environment (CI runs as root
and must exercise them) the missing requirement is a failure instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

# tests/handmade.py (hand-built timelines) is importable from every test directory
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _root_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root and Mininet: not running as root"
    if importlib.util.find_spec("mininet") is None or shutil.which("mnexec") is None:
        return "needs root and Mininet: Mininet (python module and mnexec) is not installed"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is None:
        return
    reason = _root_missing()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: root tests must run here)", pytrace=False)
    pytest.skip(reason)
