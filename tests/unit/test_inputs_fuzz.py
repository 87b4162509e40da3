"""Property-based tests of every input path (issue 15): a valid scenario, TLE file or command line with
one key, field or argument mutated (NaN, +-inf, negative, huge, empty, unicode, path separators, wrong
type, checksum-valid out-of-range TLE fields) either plans or fails with one line naming the file, the
line and the key; never a traceback.

Each entry point runs 2,000 derandomised examples (the same ones on every run) on plan-only paths with
small constellations: no root, nothing built.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings  # a test dependency: setup.cfg [test]
from hypothesis import strategies as st

from emulator.cli import build_parser, check_args, main
from topologies.errors import ConfigError, SatnetemError
from topologies.plan import plan_scenario
from topologies.scenario import load_scenario
from topologies.shells import constellation_from_tle
from topologies.tle import _LINE1_FIELDS, _LINE2_FIELDS, load_tle, tle_checksum

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 2000
FUZZ = settings(derandomize=True, max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# ------------------------------------------------------------------------------------------------------
# Scenarios
# ------------------------------------------------------------------------------------------------------
#: A valid scenario touching every section with scalar keys: a 3 x 4 shell, 2 steps (plans in ~10 ms).
SCENARIO = """\
name = "fuzz"
seed = 3

[time]
start = "2023-07-18T12:00:00Z"
duration_s = 2
step_s = 1.0

[[constellation.shells]]
name = "s"
pattern = "delta"
altitude_km = 550.0
inclination_deg = 53.0
planes = 3
sats_per_plane = 4
phasing = 1

[isl]
acquisition_s = 1.0
rate_mbps = 100.0
polar_cutoff_deg = 75.0
outage_mtbf_s = 600.0

[gsl]
min_elevation_deg = 25.0
antennas = 2
rate_mbps = 100.0
handover_interruption_ms = 10.0

[ground]
host_per_gateway = true

[[ground.sites]]
name = "gs-london"
lat_deg = 51.5
lon_deg = -0.13
alt_m = 10.0

[[ground.sites]]
name = "gs-new-york"
lat_deg = 40.7
lon_deg = -74.0

[[compute]]
name = "dc-0-0"
satellite = "sat-0-0"

[[traffic]]
kind = "ping"
src = "h-london"
dst = "h-new-york"
start_s = 0.5
duration_s = 1.0
rate_pps = 5.0
size_bytes = 64

[routing]
protocol = "shortest-delay"

[emulation]
shaper = "auto"
speed = 1.0
access_rate_mbps = 1000.0
delay_tolerance_ms = 0.01

[[events]]
kind = "fail"
target = "gs-london"
at_s = 1.0
duration_s = 0.5
"""


def _keys_and_lines(text: str) -> list[tuple[str, int, str]]:
    """(dotted key as the loader names it, 1-based line, its TOML value) of every ``key = value`` line,
    worked out here from the text alone: ``[[x]]`` tables are numbered ``x[i]``."""
    out = []
    table, counts = "", {}
    for n, line in enumerate(text.splitlines(), start=1):
        if m := re.fullmatch(r"\[\[(.+)\]\]", line):
            counts[m[1]] = counts.get(m[1], -1) + 1
            table = f"{m[1]}[{counts[m[1]]}]"
        elif m := re.fullmatch(r"\[(.+)\]", line):
            table = m[1]
        elif m := re.fullmatch(r"(\w+) = (.+)", line):
            out.append((f"{table}.{m[1]}" if table else m[1], n, m[2]))
    return out


KEYS = _keys_and_lines(SCENARIO)


def toml_value(v: object) -> str:
    """``v`` written as a TOML value (strings as basic strings with JSON escapes, which TOML shares)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        # JSON's escapes are TOML's, except that TOML wants non-BMP characters as themselves and DEL escaped
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


NASTY_STRINGS = ["", " ", "../../etc", "a/b", "..", ".", "/", "\\", "a\\b", "x" * 300, "caf\u00e9", "\u2603",
                 "\u202eevil", "a\nb", "\x00", "gs-london", "sat-0-0", "h-new-york", "-x", "A", "-", "nan", "inf",
                 "starlink", "userspace", "netem", "ospf", "least-delay", "2023-07-18T12:00:00Z"]
NASTY_NUMBERS = [math.nan, math.inf, -math.inf, -1, -1.0, 0, 0.0, -0.0, 1e-300, 5e-324, 1e-9, 0.001, 0.5, 1,
                 1.0, 2, 3, 59.999, 90.0, 180.0, 360.0, 1e6, 1e12, 1e308, -1e308, 2**31, 2**32, 2**63 - 1,
                 -(2**63), 34359.738, 34359.739]
values = st.one_of(
    st.sampled_from(NASTY_NUMBERS),
    st.sampled_from(NASTY_STRINGS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=40),
    st.booleans(),
    st.lists(st.integers(0, 3), max_size=2),
    st.just({"a": 1}),
)


def assert_one_line_naming(e: SatnetemError, *, file: str, key: str | None, line: int | None,
                           text: str = SCENARIO) -> None:
    """The error is one line and names the file and a key; the mutated key at the mutated line, any other
    key of the file at its own line (found by this test's own reading of the text)."""
    msg = str(e)
    assert len(msg.splitlines()) == 1 and "Traceback" not in msg, msg
    assert isinstance(e, ConfigError), f"{type(e).__name__}: {msg}"
    assert e.file == file, msg
    assert e.key, f"no key named: {msg}"
    if key is not None and e.key == key:
        assert e.line == line, f"{msg} (expected line {line})"
    else:
        own = {k: n for k, n, _ in _keys_and_lines(text)}
        if e.key in own:
            assert e.line == own[e.key], f"{msg} (expected line {own[e.key]})"


def scenario_file() -> Path:
    """Where the mutated scenario is written: a real file, as users give it (errors read it for lines)."""
    import tempfile

    d = Path(tempfile.gettempdir()) / f"satnetem-fuzz-{__import__('os').getpid()}"
    d.mkdir(exist_ok=True)
    return d / "fuzz.toml"


FUZZ_FILE = scenario_file()


def plan_text(text: str) -> None:
    FUZZ_FILE.write_text(text, encoding="utf-8")
    try:
        plan_scenario(load_scenario(FUZZ_FILE))
    except SatnetemError:
        event("refused")
        raise
    event("planned")


@FUZZ
@given(k=st.integers(0, len(KEYS) - 1), value=values)
def test_scenario_with_one_key_mutated_plans_or_names_the_key(k, value):
    key, line, _ = KEYS[k]
    lines = SCENARIO.splitlines()
    name = key.rsplit(".", 1)[-1]
    lines[line - 1] = f"{name} = {toml_value(value)}"
    text = "\n".join(lines) + "\n"
    try:
        plan_text(text)
    except SatnetemError as e:
        # another key than the mutated one may be named where it is at fault through it (duration_s now
        # shorter than step_s, a flow that starts after the new end, a host renamed with its gateway)
        assert_one_line_naming(e, file=str(FUZZ_FILE), key=key, line=line, text=text)
        return
    # planned: then nothing the issue calls misuse was in it
    assert not (isinstance(value, float) and not math.isfinite(value)), f"{key} = {value!r} was accepted"
    if key == "name":
        assert isinstance(value, str) and "/" not in value and "\\" not in value \
            and not value.startswith(".") and value.strip() == value and value, f"name = {value!r} was accepted"


@FUZZ
@given(k=st.integers(0, len(KEYS)), table=st.sampled_from(["", "time", "isl", "gsl", "emulation", "routing"]),
       key=st.one_of(st.sampled_from(["x", "nan", "inf", "seed", "rate_mbps", "start"]),
                     st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,12}", fullmatch=True)),
       value=values, drop=st.booleans())
def test_scenario_with_a_key_added_or_removed_plans_or_names_the_key(k, table, key, value, drop):
    lines = SCENARIO.splitlines()
    if drop and k < len(KEYS):
        key_name, line, _ = KEYS[k]
        del lines[line - 1]
        text = "\n".join(lines) + "\n"
        where: tuple[str | None, int | None] = (None, None)
    else:
        # a key in a table: unknown keys must be refused, a known one checked as any other
        extra = f"{key} = {toml_value(value)}"
        if table:
            header = f"[{table}]"
            if header not in lines:
                lines.append(header)
            lines.insert(lines.index(header) + 1, extra)
            line = lines.index(header) + 2
        else:
            lines.insert(0, extra)
            line = 1
        text = "\n".join(lines) + "\n"
        where = (f"{table}.{key}" if table else key, line)
    try:
        plan_text(text)
    except SatnetemError as e:
        msg = str(e)
        if "not valid TOML" in msg:
            # a key given twice: TOML's own error, with the line
            assert e.file == str(FUZZ_FILE) and e.line is not None and len(msg.splitlines()) == 1, msg
            return
        assert_one_line_naming(e, file=str(FUZZ_FILE), key=where[0], line=where[1], text=text)


# ------------------------------------------------------------------------------------------------------
# TLE files
# ------------------------------------------------------------------------------------------------------
def _shell_records() -> list[str]:
    """The 3-line sets of one shell of the bundled 2026 subset (70 deg, 570 km: 76 satellites in 4 planes)."""
    lines = (ROOT / "topologies" / "data" / "starlink-2026-08-21-subset.tle").read_text().splitlines()
    sets = [lines[i:i + 3] for i in range(0, len(lines) - 2, 3) if lines[i + 1].startswith("1 ")]
    return ["\n".join(s) for s in sets if 69.9 < float(s[2][8:16]) < 70.1 and float(s[2][52:63]) < 15.2]


TLE_SETS = _shell_records()
TLE_FIELDS = [(1, f) for f in _LINE1_FIELDS[:-1]] + [(2, f) for f in _LINE2_FIELDS[:-1]]


def with_checksum(line: str) -> str:
    return line[:68] + str(tle_checksum(line))


def _field_values(width: int) -> st.SearchStrategy[str]:
    """Replacement texts for a field exactly ``width`` characters wide: numbers in and far out of range,
    digits, blanks, letters, unicode."""
    def fit(x: float) -> str:
        for p in range(max(width - 2, 0), -1, -1):
            s = f"{x:{width}.{p}f}"
            if len(s) <= width:
                return s
        return ("9" * width) if x > 0 else ("-" + "9" * (width - 1))
    numbers = st.sampled_from([-999.0, -1.0, 0.0, 1e-8, 90.0, 180.0, 180.0001, 359.9999, 360.0, 999.9999, 17.0,
                               25.0, 99999.0, 0.9999999]).map(fit)
    return st.one_of(numbers, st.text(alphabet="0123456789", min_size=width, max_size=width),
                     st.text(alphabet=" 0123456789.-+", min_size=width, max_size=width),
                     st.text(min_size=width, max_size=width), st.just(" " * width),
                     st.text(alphabet="IOXZ?\u00e9", min_size=width, max_size=width))


@st.composite
def mutated_tle(draw):
    """(text, mutated line numbers (1-based), what changed) from a valid shell with one field changed
    and its checksum recomputed, or one structural change."""
    n = len(TLE_SETS)
    i = draw(st.integers(0, n - 1))
    sets = [s.splitlines() for s in TLE_SETS]
    kind = draw(st.sampled_from(["field"] * 6 + ["checksum", "drop-line", "truncate", "name", "crlf", "empty"]))
    row = 3 * i + 1  # 0-based row of line 1 of set i
    if kind == "field":
        number, (first, last, what, _) = draw(st.sampled_from(TLE_FIELDS))
        old = sets[i][number]
        new = draw(_field_values(last - first + 1))
        sets[i][number] = with_checksum(old[:first - 1] + new + old[last:])
        lines_hit = (row + 1, row + 2)
    elif kind == "checksum":
        number = draw(st.sampled_from([1, 2]))
        old = sets[i][number]
        sets[i][number] = old[:68] + str((int(old[68]) + draw(st.integers(1, 9))) % 10)
        lines_hit = (row + number,)
    elif kind == "drop-line":
        number = draw(st.sampled_from([1, 2]))
        del sets[i][number]
        lines_hit = None
    elif kind == "truncate":
        number = draw(st.sampled_from([1, 2]))
        sets[i][number] = sets[i][number][:draw(st.integers(0, 68))]
        lines_hit = (row + 1, row + 2, row + 3)
    elif kind == "name":
        sets[i][0] = draw(st.sampled_from(["", "1 ", "2 X", "0 ", "\u00e9", "x" * 500, "../../x"]))
        lines_hit = None
    elif kind == "crlf":
        return "\r\n".join("\n".join(s) for s in sets) + "\r\n", None, kind
    else:
        return "", None, kind
    return "\n".join("\n".join(s) for s in sets) + "\n", lines_hit, kind


@FUZZ
@given(case=mutated_tle())
def test_tle_file_with_one_field_mutated_loads_and_plans_or_names_file_and_line(tmp_path_factory, case):
    text, lines_hit, kind = case
    path = tmp_path_factory.getbasetemp() / "fuzz.tle"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    sc_text = SCENARIO.replace('[[constellation.shells]]\nname = "s"\npattern = "delta"\naltitude_km = 550.0\n'
                               'inclination_deg = 53.0\nplanes = 3\nsats_per_plane = 4\nphasing = 1\n',
                               f"[constellation]\ntle = {json.dumps(str(path))}\n")
    sc_text = sc_text.replace("2023-07-18T12:00:00Z", "2026-08-22T00:00:00Z")
    sc_text = "\n".join(ln for ln in sc_text.splitlines() if ln not in ("[[compute]]", 'name = "dc-0-0"',
                                                                         'satellite = "sat-0-0"')) + "\n"
    try:
        records = load_tle(path)
        constellation_from_tle(records)
        plan_text(sc_text)
    except SatnetemError as e:
        msg = str(e)
        assert len(msg.splitlines()) == 1 and isinstance(e, ConfigError), f"{type(e).__name__}: {msg}"
        if e.file == str(path):
            if lines_hit is not None and e.line is not None and kind == "field":
                assert e.line in lines_hit, (msg, lines_hit)
            assert e.line is not None or e.key is not None or "ASCII" in msg or "no TLE element sets" in msg, msg
        else:
            # the scenario that names the file: its key
            assert e.file == str(FUZZ_FILE) and e.key, msg


# ------------------------------------------------------------------------------------------------------
# Command lines
# ------------------------------------------------------------------------------------------------------
OPTION_VALUES = st.one_of(st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e308", "-1e308", "", " ", "../x",
                                           "/", "a,b", ",", "h-london,", "h-london,nope", "\u00e9", "1,2,nan",
                                           "0x10", "1_000", "NaN", "Infinity", "--json", "-o"]),
                          st.floats(allow_nan=True, allow_infinity=True).map(repr),
                          # never an absolute path: '-o VALUE' writes there (relative ones land in the test's folder)
                          st.text(max_size=20).filter(lambda s: "\x00" not in s and not s.startswith("/")))


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "s.toml").write_text(SCENARIO.replace("\n[[events]]", "\n[[events]]"))
    results = d / "results"
    results.mkdir()
    (results / "scenario.json").write_text(json.dumps({"name": "fuzz"}))
    (d / "work" / "in").mkdir(parents=True)  # the current folder while plan runs: '-o nan' writes here
    return d


@pytest.fixture(scope="module", autouse=True)
def _remove_fuzz_file():
    yield
    FUZZ_FILE.unlink(missing_ok=True)
    FUZZ_FILE.parent.rmdir()


PLAN_LINES = [["plan", "{s}", "--pair", "h-london,h-new-york"], ["plan", "{s}", "--json"],
              ["plan", "{s}", "-o", "{d}/tl.npz"]]
PARSE_ONLY_LINES = [["run", "{s}", "--duration", "5", "--speed", "2", "--shaper", "userspace"],
                    ["cli", "{s}", "--speed", "1"],
                    ["compare", "{s}", "--protocols", "min-hop,shortest-delay", "--duration", "3"],
                    ["clean", "--run-id", "abc"], ["plan", "--tle", "{tle}", "--shell-inclination", "53"],
                    ["report", "{d}/results", "--map-at", "0,1"],
                    ["cluster", "start", "--join", "10.0.0.1:6379", "--address", "10.0.0.2", "--host", "1"],
                    ["cluster", "stop", "--address", "10.0.0.2"]]


@FUZZ
@given(which=st.integers(0, len(PLAN_LINES) + len(PARSE_ONLY_LINES) - 1), pos=st.integers(0, 9),
       value=OPTION_VALUES, insert=st.booleans())
def test_command_line_with_one_argument_mutated_never_ends_in_a_traceback(cli_files, capsys, monkeypatch, which,
                                                                          pos, value, insert):
    d = cli_files
    monkeypatch.chdir(d / "work" / "in")
    template = (PLAN_LINES + PARSE_ONLY_LINES)[which]
    argv = [a.format(s=d / "s.toml", d=d, tle=ROOT / "topologies" / "data" / "starlink-2023-07.tle")
            for a in template]
    i = 1 + pos % len(argv)
    if insert or i >= len(argv):
        argv.insert(min(i, len(argv)), value)
    else:
        argv[i] = value
    if which < len(PLAN_LINES):
        # plan runs whole (small scenario, no root); exit status 0, or 2 with one line on stderr
        try:
            status = main(argv)
        except SystemExit as e:
            status = int(e.code or 0)
        err = capsys.readouterr().err
        assert status in (0, 2), (argv, status, err)
        if status == 2:
            assert len(err.splitlines()) == 1 and err.startswith("satnetem: error: ") and "Traceback" not in err, err
        return
    # run, cli, compare, clean (root: they would build or kill): only what main() does before the command
    # itself, parsing and checking the arguments; report and plan --tle (slow) likewise
    try:
        args = build_parser().parse_args(argv)
        check_args(args)
    except SystemExit as e:
        err = capsys.readouterr().err
        assert e.code in (0, 2) and "Traceback" not in err, err
        if e.code == 2:
            assert len(err.splitlines()) == 1 and err.startswith("satnetem: error: "), err
    except ConfigError as e:
        assert len(str(e).splitlines()) == 1 and e.key and e.key.startswith("--"), str(e)
