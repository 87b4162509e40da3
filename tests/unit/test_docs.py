"""The docs cannot drift from the code: every scenario, command and code example shown in them runs.

Scenario blocks are loaded and planned; `satnetem` command lines are parsed by the real argument parser
(and the ones that need no root are run); Python examples are executed. The root-only commands
(`run`, `compare`, `cli`, `clean`) are run end to end by the integration tests.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from emulator.cli import build_parser, main
from topologies.scenario import parse_scenario

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "vagrant" / "README.md", ROOT / "examples" / "plugin" / "README.md",
        ROOT / "tests" / "vm" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NO_ROOT = {"plan", "protocols"}


def blocks(lang: str) -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        if doc.is_file():
            for m in FENCE.finditer(doc.read_text()):
                if m.group(1) == lang:
                    out.append((f"{doc.relative_to(ROOT)}", m.group(2)))
    return out


def satnetem_lines() -> list[tuple[str, list[str]]]:
    out = []
    for where, text in blocks("sh") + blocks(""):
        for line in text.splitlines():
            line = line.strip().removeprefix("$ ")
            m = re.search(r"(?:^|&& |-c ')(?:sudo )?(?:\S*/)?satnetem (.*?)'?$", line)
            if m and not line.startswith("satnetem plan:") and not line.startswith("satnetem run '"):
                out.append((where, shlex.split(m.group(1), comments=True)))
    return out


def test_docs_have_examples_to_check():
    assert len(blocks("toml")) >= 3 and len(satnetem_lines()) >= 8 and blocks("python")


@pytest.mark.parametrize("where, text", blocks("toml"), ids=lambda x: x if isinstance(x, str) and "/" in x
                         or x.endswith(".md") else None)
def test_toml_blocks_are_valid(where, text):
    table = tomllib.loads(text)
    if "project" in table or "build-system" in table:
        return  # a package's pyproject.toml, not a scenario
    from topologies.plan import plan_scenario

    sc = parse_scenario(text, where)
    plan_scenario(sc)  # names, endpoints and presets all resolve


@pytest.mark.parametrize("where, argv", satnetem_lines(), ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_satnetem_commands_in_docs_parse_and_the_rootless_ones_run(where, argv, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = build_parser().parse_args(argv)  # SystemExit (exit 2) on a wrong option
    for value in vars(args).values():
        if isinstance(value, str) and value.endswith((".toml", ".tle", ".npz")) and "<" not in value:
            assert (ROOT / value).is_file() or Path(value).is_file(), f"{where}: {value} does not exist"
    if args.command in NO_ROOT:
        assert main(argv) == 0, f"{where}: satnetem {' '.join(argv)}"
        assert capsys.readouterr().out


def test_python_examples_run():
    """The plugin example in the README computes loop-free routes on a real timeline."""
    from routing.base import RouteTable
    from routing.paths import table_path
    from topologies.plan import plan_scenario

    for where, code in blocks("python"):
        compile(code, where, "exec")
        if where != "README.md" or "emulator.api" in code:
            continue  # the plugin's README uses the installed plugin: tests/integration/test_protocols.py;
            # the scripting examples: test_scripting_examples_run
        ns: dict = {"__name__": "docs_example"}
        exec(compile(code, where, "exec"), ns)  # noqa: S102 - our own documentation's example
        classes = [v for v in ns.values() if isinstance(v, type) and getattr(v, "name", "") and
                   hasattr(v, "compute") and v.__module__ == ns.get("__name__")]
        assert classes, f"{where}: no protocol class in the example"
        tl = plan_scenario(parse_scenario('[constellation]\npreset = "iridium"\n[time]\nduration_s = 3\n'
                                          '[gsl]\nmin_elevation_deg = 10.0\n'
                                          '[[ground.sites]]\nname = "gs-a"\nlat_deg = 0\nlon_deg = 0\n'
                                          '[[ground.sites]]\nname = "gs-b"\nlat_deg = 40\nlon_deg = 60\n'))
        table = classes[0]().compute(tl, 0)
        assert isinstance(table, RouteTable)
        nodes, _ = table_path(table, tl.node_index("h-a"), tl.node_index("h-b"))
        assert nodes and nodes[-1] == tl.node_index("h-b")


def test_scripting_examples_run(monkeypatch, capsys):
    """The README's plan-only scripting example runs (no root); the live one needs root: it is compiled
    above, and tests/integration/test_api.py runs the same flow (examples/scripted.py) on a live network."""
    monkeypatch.chdir(ROOT)
    codes = [code for where, code in blocks("python") if where == "README.md" and "emulator.api" in code]
    assert any("open_emulation(" in c for c in codes) and any("plan_only(" in c for c in codes)
    for code in codes:
        if "open_emulation(" not in code:
            exec(compile(code, "README.md", "exec"), {"__name__": "docs_example"})  # noqa: S102
    assert " ms -> " in capsys.readouterr().out


def test_example_scenarios_plan():
    from topologies.plan import plan_scenario
    from topologies.scenario import load_scenario

    examples = sorted((ROOT / "examples").glob("*.toml"))
    assert examples
    for path in examples:
        sc = load_scenario(path)
        # every name, key and file resolves in a few steps; the full 10-minute plan of the 10,744-satellite
        # example is bench/bench_plan.py's job
        sc = dataclasses.replace(sc, time=dataclasses.replace(sc.time, duration_s=min(sc.time.duration_s,
                                                                                       5 * sc.time.step_s)))
        tl = plan_scenario(sc)
        assert tl.n_steps > 0
