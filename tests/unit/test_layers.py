"""The pure layers import without root, Mininet or pyroute2 (the house style's one-way imports)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_topologies_and_routing_do_not_pull_in_the_kernel_layer():
    code = (
        "import sys, pkgutil, importlib\n"
        "import topologies, routing\n"
        "for pkg in (topologies, routing):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mininet', 'pyroute2', 'emulator'))\n"
        "print(' '.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"imported: {r.stdout} {r.stderr[-2000:]}"
