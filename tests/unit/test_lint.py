"""The house tooling passes: ruff on the whole tree, mypy on all three layers (setup.cfg's [mypy]), and
every type-checker exception there names its error code and says why."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_passes():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_mypy_passes_on_all_three_layers():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert {f.strip() for f in cfg["mypy"]["files"].split(",")} >= {"topologies", "routing", "emulator"}
    assert not any(k.startswith("mypy-") and cfg[k].get("ignore_errors") for k in cfg.sections()), \
        "no module-wide ignore_errors"
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_every_type_ignore_names_its_code_and_reason():
    """``# type: ignore[code]  # why`` or ``# type: ignore[code] - why``: never bare, never a whole file."""
    import re

    bad = []
    for layer in ("topologies", "routing", "emulator"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.match(r"\s*#\s*(mypy|type):\s*ignore-errors|\s*#\s*type:\s*ignore\s*$", line):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: file-wide ignore")
                for m in re.finditer(r"#\s*type:\s*ignore(\[[\w\-, ]+\])?(.*)$", line):
                    code, rest = m.group(1), m.group(2).strip()
                    if not code or not re.match(r"^(#|-|:)\s*\w", rest):
                        bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "type: ignore without a code and a reason:\n" + "\n".join(bad)
