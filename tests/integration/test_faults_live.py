"""Faults during a run, as a user or the machine causes them (issue 15): the runner killed with SIGKILL
and then ``satnetem clean``; SIGINT or SIGTERM while the network is built and while it is torn down; a
part the run cannot do without (a delay-daemon shard, the namespace holder) killed from outside; two
runs at once. Each ends with nothing of the run left, judged from /proc, the state directory, the host's
nf_tables and interfaces (never from what the product says about itself), and a results folder that
``satnetem report`` reads."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]
STATE = Path("/run/satnetem")

SCENARIO = """
name = "faults"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = {duration_s}
step_s = {step_s}
[[constellation.shells]]
name = "s"
planes = {planes}
sats_per_plane = {planes}
[gsl]
min_elevation_deg = 10.0
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5074
lon_deg = -0.1278
[[ground.sites]]
name = "gs-new-york"
lat_deg = 40.7128
lon_deg = -74.0060
[[traffic]]
kind = "ping"
src = "h-london"
dst = "h-new-york"
rate_pps = 5
[[traffic]]
kind = "udp-probe"
src = "h-london"
dst = "h-new-york"
rate_pps = 20
"""


def scenario(tmp_path: Path, duration_s: float = 20, step_s: float = 1.0, planes: int = 12, extra: str = "") -> Path:
    p = tmp_path / "faults.toml"
    p.write_text(SCENARIO.format(duration_s=duration_s, step_s=step_s, planes=planes) + extra)
    return p


class Run:
    """``satnetem run`` in the background, its output lines kept with the time each arrived."""

    def __init__(self, scenario_path: Path, out: Path, run_id: str, *extra: str) -> None:
        self.out, self.run_id = out, run_id
        self.proc = subprocess.Popen([sys.executable, "-m", "emulator.cli", "run", str(scenario_path), "-o", str(out),
                                      "--run-id", run_id, *extra], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines: list[tuple[float, str]] = []
        self.err = ""
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        self._e = threading.Thread(target=self._read_err, daemon=True)
        self._e.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.err = self.proc.stderr.read()

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, pattern: str, timeout_s: float = 120) -> float:
        """The time the first line matching ``pattern`` arrived (waiting for it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for t, line in list(self.lines):
                if re.search(pattern, line):
                    return t
            if self.proc.poll() is not None and not self._t.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r}: {self.text[-2000:]} {self.err[-2000:]}")

    def wait_playing(self, timeout_s: float = 120) -> None:
        """Until the clock has started (the runner writes run.json then)."""
        deadline = time.monotonic() + timeout_s
        while not (self.out / "run.json").exists():
            assert time.monotonic() < deadline and self.proc.poll() is None, self.text[-2000:] + self.err[-2000:]
            time.sleep(0.05)

    def finish(self, timeout_s: float = 180) -> int:
        rc = self.proc.wait(timeout=timeout_s)
        self._t.join(timeout=10)
        self._e.join(timeout=10)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def runs():
    """Runs started by a test: killed and cleaned (by run id) at its end, even when it fails."""
    made: list[Run] = []
    yield made
    for r in made:
        r.kill()
        subprocess.run([sys.executable, "-m", "emulator.cli", "clean", "--run-id", r.run_id], cwd=REPO,
                       capture_output=True, timeout=120)


# --------------------------------------------------------------------------- what a run leaves, from /proc

def procs() -> dict[int, tuple[int, int, str]]:
    """{pid: (parent pid, netns inode, argv joined)} of every readable, non-zombie process."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
                if st[0] == "Z":
                    continue
                argv = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out[int(d)] = (int(st[1]), os.stat(f"/proc/{d}/ns/net").st_ino, argv)
            except (OSError, IndexError, ValueError):
                pass
    return out


def run_snapshot(run: Run, inodes: set[int] | None = None) -> tuple[set[int], set[int]]:
    """The run's processes (the runner's descendants and whatever lives in its namespaces) and its
    namespace inodes (from its state file, unless given), seen from /proc."""
    if inodes is None:
        inodes = set(json.loads((STATE / f"{run.run_id}.json").read_text())["netns_inodes"])
    ps = procs()
    ours = {run.proc.pid}
    while True:
        new = {p for p, (pp, _, _) in ps.items() if pp in ours} - ours
        if not new:
            break
        ours |= new
    ours |= {p for p, (_, ino, _) in ps.items() if ino in inodes}
    return ours & ps.keys(), inodes


def host_state() -> tuple[list[str], set[str]]:
    """The host namespace's nf_tables tables (through pyroute2, not the product's netlink code) and
    interfaces."""
    from pyroute2.nftables.main import NFTables

    nft = NFTables()
    try:
        tables = sorted(str(t.get_attr("NFTA_TABLE_NAME")) for t in nft.get_tables())
    finally:
        nft.close()
    return tables, set(os.listdir("/sys/class/net"))


def assert_nothing_left(run: Run, pids: set[int], inodes: set[int], host: tuple[str, set[str]]) -> None:
    ps = procs()
    alive = sorted(p for p in pids if p in ps and p != run.proc.pid)
    assert not alive, f"processes of the run still alive: {[(p, ps[p][2][:80]) for p in alive]}"
    in_ns = sorted(p for p, (_, ino, _) in ps.items() if ino in inodes)
    assert not in_ns, f"processes still in the run's namespaces: {in_ns}"
    marked = sorted(p for p, (_, _, argv) in ps.items() if f"satnetem:{run.run_id}:" in argv)
    assert not marked, f"processes marked with the run id still alive: {marked}"
    assert not list(STATE.glob(f"{run.run_id}*")), f"state left: {list(STATE.glob(f'{run.run_id}*'))}"
    tables, links = host_state()
    assert tables == host[0], f"host nf_tables changed: {host[0]!r} -> {tables!r}"
    assert links <= host[1], f"interfaces left in the host's namespace: {sorted(links - host[1])}"


def assert_report_reads(out: Path, min_samples: int = 10) -> dict:
    """``satnetem report`` rebuilds the summary of the folder, with the samples taken before the fault."""
    r = subprocess.run([sys.executable, "-m", "emulator.cli", "report", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    sent = sum(f.get("sent", 0) for f in summary.get("flows", []) if f["kind"] in ("ping", "udp-probe"))
    assert sent >= min_samples, summary.get("flows")
    return summary


def no_traceback(run: Run) -> None:
    assert "Traceback" not in run.err and "Traceback" not in run.text, run.err[-3000:]


# ---------------------------------------------------------------------------------------------- the tests

def test_sigkill_of_the_runner_then_clean_leaves_nothing(tmp_path, runs):
    host = host_state()
    run = Run(scenario(tmp_path), tmp_path / "results", f"f9-{os.getpid()}")
    runs.append(run)
    run.wait_playing()
    time.sleep(2.0)  # traffic flowing, samples on disk
    pids, inodes = run_snapshot(run)
    run.proc.send_signal(signal.SIGKILL)
    run.finish(timeout_s=10)
    time.sleep(0.5)
    ps = procs()
    survivors = {p for p in pids if p in ps}
    # the traffic programs in the nodes outlive a killed runner and keep its namespaces: clean's work
    assert survivors, "nothing outlived the runner: this test would not test clean"
    assert any(ps[p][1] in inodes for p in survivors)
    r = subprocess.run([sys.executable, "-m", "emulator.cli", "clean", "--run-id", run.run_id], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_nothing_left(run, pids, inodes, host)
    assert not (tmp_path / "results" / "summary.json").exists()  # the runner never got to write it ...
    assert_report_reads(tmp_path / "results")  # ... and report builds one from the samples on disk


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_bring_up_ends_cleanly(tmp_path, runs, sig):
    host = host_state()
    run = Run(scenario(tmp_path, planes=24), tmp_path / "results", f"fb-{sig.name.lower()}-{os.getpid()}")
    runs.append(run)
    run.wait_for(r"^building ")
    state = STATE / f"{run.run_id}.json"
    deadline = time.monotonic() + 60
    while not state.exists() and time.monotonic() < deadline:  # the namespaces exist: mid-build
        time.sleep(0.005)
    inodes = set(json.loads(state.read_text())["netns_inodes"])
    run.proc.send_signal(sig)  # at once: reading /proc first would let the build end under a light load
    pids, _ = run_snapshot(run, inodes)
    rc = run.finish()
    assert "built in" not in run.text, "the signal came after the build: this test would not test bring-up"
    assert rc == 130, (rc, run.text[-2000:], run.err[-2000:])
    assert "interrupted" in run.text
    no_traceback(run)
    assert_nothing_left(run, pids, inodes, host)
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["complete"] is False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signals_during_teardown_do_not_cut_it_short(tmp_path, runs, sig):
    host = host_state()
    run = Run(scenario(tmp_path), tmp_path / "results", f"ft-{sig.name.lower()}-{os.getpid()}")
    runs.append(run)
    run.wait_playing()
    time.sleep(2.0)
    pids, inodes = run_snapshot(run)
    run.proc.send_signal(signal.SIGINT)  # ends the run: the teardown begins ...
    run.wait_for(r"^interrupted")
    # ... and more signals keep coming (a user pressing Ctrl-C again, a service manager's SIGTERM)
    # until the summary is on disk: the teardown is over by then
    summary_path = tmp_path / "results" / "summary.json"
    deadline = time.monotonic() + 60
    while not summary_path.exists() and run.proc.poll() is None and time.monotonic() < deadline:
        run.proc.send_signal(sig)
        time.sleep(0.01)
    rc = run.finish()
    assert_nothing_left(run, pids, inodes, host)
    assert summary_path.is_file(), (rc, run.text[-2000:], run.err[-2000:])
    assert rc in (130, -sig), (rc, run.text[-2000:], run.err[-2000:])  # after the teardown, either is fine
    no_traceback(run)
    # the signals did arrive during the teardown (it says so once), not only before or after it
    assert len(re.findall(r"signal \d+ during the teardown", run.text)) == 1, run.text[-2000:]


def _shard_pid(run: Run) -> int:
    ps = procs()
    shards = [p for p, (pp, _, argv) in ps.items() if pp == run.proc.pid and argv.startswith("emulator.shaping.delayd")]
    assert shards, "no delay daemon shard among the runner's children"
    return shards[0]


def _holder_pid(run: Run) -> int:
    return int(json.loads((STATE / f"{run.run_id}.json").read_text())["holder"])


@pytest.mark.parametrize("victim", ["delay-daemon-shard", "namespace-holder", "clean-from-outside",
                                    "interface-deleted"])
def test_a_dead_part_stops_the_run_within_2_s_with_one_line(tmp_path, runs, victim):
    """5 s steps: a step would notice a dead part up to 5 s late, or never; the run must stop within 2 s.
    clean-from-outside: ``satnetem clean --run-id`` of the playing run from another shell, which deletes
    its namespaces (kills the holder and everything in them). interface-deleted: ``ip link del`` of one of a
    satellite's interfaces from inside its namespace (its veth peer goes too)."""
    from emulator.shaping import probe_netem

    if victim == "delay-daemon-shard" and probe_netem()[0]:
        pytest.skip("the kernel has netem: the userspace delay daemon runs only with --shaper userspace")
    host = host_state()
    run = Run(scenario(tmp_path, duration_s=60, step_s=5.0), tmp_path / "results", f"fd-{victim[:5]}-{os.getpid()}",
              "--shaper", "userspace")
    runs.append(run)
    run.wait_playing()
    time.sleep(6.0)  # past the first step, samples on disk
    pids, inodes = run_snapshot(run)
    pid = _shard_pid(run) if victim == "delay-daemon-shard" else _holder_pid(run)
    token, what = str(pid), "delay daemon" if victim == "delay-daemon-shard" else "namespace holder"
    if victim == "interface-deleted":
        ns = f"--net=/proc/{_holder_pid(run)}/root/run/satnetem-netns/sat-0-0"
        links = subprocess.run(["nsenter", ns, "ip", "-o", "link", "show"], capture_output=True, text=True,
                               check=True).stdout
        ifname = next(m for m in re.findall(r"^\d+: ([^:@]+)", links, re.M) if m != "lo")
        token, what = f"{ifname} of sat-0-0", "deleted from outside"
    t_kill = time.monotonic()
    if victim == "interface-deleted":
        subprocess.run(["nsenter", ns, "ip", "link", "del", ifname], check=True)
    elif victim == "clean-from-outside":
        r = subprocess.run([sys.executable, "-m", "emulator.cli", "clean", "--run-id", run.run_id], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    else:
        os.kill(pid, signal.SIGKILL)
    assert_stopped_within_2_s(run, t_kill, [token, what], tmp_path / "results", pids, inodes, host)


def assert_stopped_within_2_s(run: Run, t_kill: float, words: list[str], out: Path, pids: set[int],
                              inodes: set[int], host: tuple[list[str], set[str]], min_samples: int = 10,
                              read_back: bool = True) -> dict:
    """The run said ``run stopped: ...`` (once, holding every one of ``words``) within 2 s of ``t_kill``
    (``time.monotonic()``), applied no step after that, exited 1 with no traceback, left nothing, recorded
    the fault in ``summary.json``, and (``read_back``) ``satnetem report`` reads its folder. Returns the
    summary."""
    t_line = run.wait_for(r"^run stopped: ", timeout_s=30)
    rc = run.finish()
    assert t_line - t_kill <= 2.0, f"the run said it stopped {t_line - t_kill:.2f} s after the fault"
    stopped = [line for _, line in run.lines if line.startswith("run stopped: ")]
    assert len(stopped) == 1 and all(w in stopped[0] for w in words), (words, stopped)
    assert rc == 1, (rc, run.text[-2000:], run.err[-2000:])
    no_traceback(run)
    # no step applied after the fault was seen (+ the 2 s): the clock stopped
    run_json = json.loads((out / "run.json").read_text())
    t_kill_unix = time.time() - (time.monotonic() - t_kill)
    with open(out / "steps.csv") as f:
        dues = [float(line.split(",")[1]) for line in list(f)[1:]]
    assert all(d <= t_kill_unix - run_json["t0_unix"] + 2.0 for d in dues), (dues, t_kill_unix - run_json["t0_unix"])
    assert_nothing_left(run, pids, inodes, host)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and words[0] in summary["fault"]
    return assert_report_reads(out, min_samples) if read_back else summary


def _child(run: Run, prefix: str) -> int:
    """The runner's descendant whose command line starts with ``prefix`` (node programs exec through
    setsid, nsenter and stdbuf, keeping their pid)."""
    ps = procs()
    ours, _ = run_snapshot(run)
    def short(argv: str) -> str:  # /usr/sbin/bird -f ... -> bird -f ...
        prog, _, rest = argv.partition(" ")
        return f"{os.path.basename(prog)} {rest}"

    found = [p for p in ours if p in ps and short(ps[p][2]).startswith(prefix)]
    assert len(found) == 1, (prefix, [(p, ps[p][2][:80]) for p in ours if p in ps])
    return found[0]


def test_a_killed_bird_daemon_stops_the_run_within_2_s(tmp_path, runs):
    """ospf: a BIRD killed keeps its routes in the kernel, frozen, while the links change under them; no step
    would notice (a reconfiguration reaches only the daemons whose costs drift)."""
    import shutil

    if not shutil.which("bird"):
        pytest.skip("BIRD 2 is not installed")
    host = host_state()
    run = Run(scenario(tmp_path, duration_s=60, step_s=5.0, planes=8, extra='[routing]\nprotocol = "ospf"\n'),
              tmp_path / "results", f"fo-bird-{os.getpid()}")
    runs.append(run)
    run.wait_playing()
    time.sleep(6.0)
    pids, inodes = run_snapshot(run)
    victim = _child(run, f"bird -f -c /run/satnetem/{run.run_id}/bird/sat-3-4.conf")
    t_kill = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    # ospf's first seconds lose probes while the daemons converge: any sample on disk will do
    assert_stopped_within_2_s(run, t_kill, [f"BIRD daemon of sat-3-4 (pid {victim})", "SIGKILL"],
                              tmp_path / "results", pids, inodes, host, min_samples=1)


TRAFFIC_EXTRA = """
[[traffic]]
kind = "iperf3-udp"
src = "h-new-york"
dst = "h-london"
rate_mbps = 1
"""


@pytest.mark.parametrize("program,prefix,flow", [
    ("ping", "ping -D", "ping:h-london--h-new-york"),
    ("udpprobe", f"{Path(sys.executable).name} -m emulator.traffic.udpprobe send", "udp-probe:h-london--h-new-york"),
    ("iperf3", "iperf3 -c", "iperf3-udp:h-new-york--h-london"),
])
def test_a_killed_traffic_program_stops_the_run_within_2_s(tmp_path, runs, program, prefix, flow):
    """Its flow's samples would end there, and the run go on as if nothing happened but a loss figure."""
    host = host_state()
    run = Run(scenario(tmp_path, duration_s=60, step_s=5.0, extra=TRAFFIC_EXTRA), tmp_path / "results",
              f"fp-{program[:4]}-{os.getpid()}")
    runs.append(run)
    run.wait_playing()
    time.sleep(4.0)
    pids, inodes = run_snapshot(run)
    victim = _child(run, prefix)
    t_kill = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    # the folder is read back once (after ping's kill): the three differ only in which program died
    assert_stopped_within_2_s(run, t_kill, [f"traffic program {program} of flow {flow} (pid {victim})", "SIGKILL"],
                              tmp_path / "results", pids, inodes, host, read_back=program == "ping")


def test_two_runs_at_once_do_not_touch_each_other(tmp_path, runs):
    host = host_state()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Run(scenario(tmp_path / "a", duration_s=8), tmp_path / "a" / "results", f"fa-{os.getpid()}")
    runs.append(a)
    # b outlasts a: a's teardown happens while b plays
    b = Run(scenario(tmp_path / "b", duration_s=16), tmp_path / "b" / "results", f"fb-{os.getpid()}")
    runs.append(b)
    a.wait_playing()
    b.wait_playing()
    snap_a, snap_b = run_snapshot(a), run_snapshot(b)
    assert not (snap_a[1] & snap_b[1]), "the two runs share a namespace"
    assert not ((snap_a[0] - {a.proc.pid}) & snap_b[0]), "the two runs share a process"
    assert a.finish() == 0, a.text[-2000:] + a.err[-2000:]
    assert b.finish() == 0, b.text[-2000:] + b.err[-2000:]
    for r, snap in ((a, snap_a), (b, snap_b)):
        assert_nothing_left(r, *snap, host)
        summary = json.loads((r.out / "summary.json").read_text())
        assert summary["complete"] and summary["run_id"] == r.run_id
        for f in summary["flows"]:  # each run's probes got through its own network, start to end
            assert f["sent"] > 20 and f["lost"] <= 0.1 * f["sent"], f


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB tmpfs mounted on ``tmp_path/results``: a results folder whose disk can be filled. Unmounted
    at the end (lazily if something still holds it open)."""
    d = tmp_path / "results"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "satnetem-test-full", str(d)], check=True)
    try:
        yield d
    finally:
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_a_full_disk_under_the_results_folder_stops_the_run_within_2_s(tmp_path, runs, small_disk):
    """The run's files are written by its traffic programs too (ping's output, the UDP probe's CSVs), which
    cannot report a failed write: without a check the run plays on, its samples cut off or half-written."""
    host = host_state()
    out = small_disk
    run = Run(scenario(tmp_path, duration_s=60, step_s=5.0), out, f"fs-{os.getpid()}")
    runs.append(run)
    run.wait_playing()
    time.sleep(4.0)
    pids, inodes = run_snapshot(run)
    sizes = {p.relative_to(out): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    t_full = time.monotonic()
    with open(out / "filler", "wb") as f:  # another program fills the disk, to the last block
        chunk = b"\0" * (1 << 16)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as e:
            assert e.errno == 28, e  # ENOSPC
            filled = time.monotonic()
    assert filled - t_full < 1.0
    t_line = run.wait_for(r"^run stopped: ", timeout_s=30)
    rc = run.finish()
    assert t_line - t_full <= 2.0, f"the run said it stopped {t_line - t_full:.2f} s after the disk filled"
    stopped = [line for _, line in run.lines if line.startswith("run stopped: ")]
    assert len(stopped) == 1 and f"results folder {out}" in stopped[0] and "kB free" in stopped[0], stopped
    assert rc == 1, (rc, run.text[-2000:], run.err[-2000:])
    no_traceback(run)
    assert_nothing_left(run, pids, inodes, host)
    # what was on disk before the disk filled is still there, none of it shorter
    for rel, size in sizes.items():
        assert (out / rel).stat().st_size >= size, rel
    (out / "filler").unlink()  # room again: report rebuilds the summary from the samples kept
    summary = assert_report_reads(out)
    assert summary.get("complete") is not True


def test_the_api_raises_the_line_of_a_killed_shard_within_2_s(tmp_path):
    """A script blocked in ``run()`` for minutes learns of a dead delay-daemon shard at once, as the runner
    does; every later call that moves the network raises it again until ``close()``."""
    from emulator.api import open_emulation
    from emulator.clean import find_ours
    from emulator.shaping import probe_netem
    from topologies.errors import SatnetemError

    if probe_netem()[0]:
        pytest.skip("the kernel has netem: the userspace delay daemon runs only with shaper userspace")
    run_id = f"fapi-{os.getpid()}"
    killed: list[float] = []
    with open_emulation(scenario(tmp_path, duration_s=60, step_s=5.0), shaper="userspace", run_id=run_id) as emu:
        shard = emu.emulation.shaper.pids[0]

        def kill() -> None:
            time.sleep(3.0)
            killed.append(time.monotonic())
            os.kill(shard, signal.SIGKILL)

        threading.Thread(target=kill, daemon=True).start()
        with pytest.raises(SatnetemError, match=rf"emulation stopped: delay daemon shard 0 \(pid {shard}\)"):
            emu.run(seconds=60)
        raised = time.monotonic()
        assert killed and raised - killed[0] <= 2.0, f"run() raised {raised - killed[0]:.2f} s after the kill"
        with pytest.raises(SatnetemError, match="emulation stopped"):
            emu.step()
    assert find_ours(run_id) == (set(), set()), "the emulation left processes or namespaces"


def test_the_cli_says_a_killed_holder_within_2_s_and_ends_at_the_next_line(tmp_path):
    """``satnetem cli``: the clock runs in a thread while the user types; a dead namespace holder is said
    at once (the prompt is waiting on the terminal), and the next line ends the emulation with status 1."""
    host = host_state()
    run_id = f"fcli-{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-m", "emulator.cli", "cli", str(scenario(tmp_path, duration_s=60)),
                             "--run-id", run_id], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def wait_for(pattern: str, timeout_s: float = 120) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for t, line in list(lines):
                if re.search(pattern, line):
                    return t
            assert proc.poll() is None, "\n".join(line for _, line in lines)[-3000:]
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r}: " + "\n".join(line for _, line in lines)[-3000:])

    try:
        wait_for(r"clock running")
        state = json.loads((STATE / f"{run_id}.json").read_text())
        holder, inodes = int(state["holder"]), set(state["netns_inodes"])
        time.sleep(2.0)
        t_kill = time.monotonic()
        os.kill(holder, signal.SIGKILL)
        t_line = wait_for(r"run stopped: the namespace holder")
        assert t_line - t_kill <= 2.0, f"the cli said it {t_line - t_kill:.2f} s after the kill"
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        rc = proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run([sys.executable, "-m", "emulator.cli", "clean", "--run-id", run_id], cwd=REPO,
                       capture_output=True, timeout=120)
    text = "\n".join(line for _, line in lines)
    assert rc == 1, (rc, text[-3000:])
    assert "Traceback" not in text, text[-3000:]
    ps = procs()
    assert not [p for p, (_, ino, argv) in ps.items() if ino in inodes or f"satnetem:{run_id}:" in argv]
    assert not list(STATE.glob(f"{run_id}*"))
    tables, links = host_state()
    assert tables == host[0] and links <= host[1]
