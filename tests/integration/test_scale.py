"""A build of a few hundred nodes under an open-file limit of 4,096: it routes and pings end to end, adds
the same number of processes and ptys whatever its size (counted from /proc, not from the product), runs
``cmd`` on any node, and ``satnetem clean`` removes everything after the runner is killed with SIGKILL."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]
NOFILE = 4096

WALKER = """
name = "scale-walker"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 10
[[constellation.shells]]
name = "w"
planes = {n}
sats_per_plane = {n}
phasing = 5
altitude_km = 1000
inclination_deg = 53
[gsl]
min_elevation_deg = 10.0
[[ground.sites]]
name = "gs-madrid"
lat_deg = 40.4
lon_deg = -3.7
[[ground.sites]]
name = "gs-chicago"
lat_deg = 41.9
lon_deg = -87.6
"""

# The runner: plans, waits for "build", builds, waits for "use", applies steps, pings, runs cmd on a node,
# then sleeps until killed. ``pool`` > 0 caps the open rtnetlink sockets far below the node count, so
# that sockets are closed and reopened all through the build and the steps.
RUNNER = textwrap.dedent("""
    import json, random, re, sys, time
    from topologies.plan import plan_scenario
    from topologies.scenario import parse_scenario
    from emulator import nodes, rtnl
    from emulator.network import Emulation
    from emulator.shaping import make_shaper
    text, run_id, pool = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if pool:
        rtnl.POOL.limit = pool
        nodes.MAX_SHELLS = 1
    tl = plan_scenario(parse_scenario(text, "<test>"))
    emu = Emulation(tl, make_shaper("userspace")[0], "shortest-delay", run_id=run_id)
    print("PLANNED", flush=True)
    sys.stdin.readline()
    emu.build()
    print("BUILT", json.dumps({"nodes": len(tl.nodes), "holder": emu.holder.pid}), flush=True)
    sys.stdin.readline()
    for step in range(1, 4):
        emu.apply_step(step)
    out = emu.node("h-madrid").cmd(f"ping -n -c 5 -i 0.2 -W 2 {emu.address_of('h-chicago')}")
    m = re.search(r"(\\d+) received", out)
    name = random.Random(len(tl.nodes)).choice([n.name for n in tl.nodes])
    ns = emu.node(name).cmd("readlink /proc/self/ns/net").strip()
    print("USED", json.dumps({"received": int(m.group(1)) if m else 0, "node": name, "ns": ns,
                              "shells": len(emu.pids),
                              "path": emu.node(name).ns_path, "opened": rtnl.POOL.stats()["opened"]}),
          flush=True)
    time.sleep(600)
""")


def _limit_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def descendants(root: int) -> set[int]:
    """Processes descended from ``root`` (read from /proc/*/stat here, independently of the product)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = set(), [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def ptys(pids: set[int]) -> set[str]:
    """The /dev/pts/N open in any of ``pids``."""
    out = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    t = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if t.startswith("/dev/pts/"):
                    out.add(t)
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _line(proc: subprocess.Popen, tag: str) -> str:
    line = proc.stdout.readline()
    assert line.startswith(tag), f"expected {tag}, got {line!r}"
    return line[len(tag):].strip()


def _start(n: int, run_id: str, pool: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUNNER, WALKER.format(n=n), run_id, str(pool)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=_limit_nofile)


def test_large_build_under_4096_open_files(tmp_path):
    from emulator.clean import clean, find_ours

    added = {}
    runs = {}
    try:
        for n, pool in ((8, 0), (16, 64)):
            run_id = f"scale{n}-{os.getpid()}"
            proc = runs[n] = _start(n, run_id, pool)
            _line(proc, "PLANNED")
            assert Path(f"/proc/{proc.pid}/limits").read_text().count(str(NOFILE)) >= 2
            before = {proc.pid} | descendants(proc.pid)
            pts_before = ptys(before)
            proc.stdin.write("build\n")
            proc.stdin.flush()
            info = json.loads(_line(proc, "BUILT"))
            after = {proc.pid} | descendants(proc.pid)
            added[n] = (len(after - before), len(ptys(after) - pts_before), info["nodes"])
            proc.stdin.write("use\n")
            proc.stdin.flush()
            used = json.loads(_line(proc, "USED"))
            assert used["received"] >= 4, used  # routed end to end over the ISLs
            # cmd ran in the node asked for: its shell's namespace is the one at the node's path
            assert used["ns"] == f"net:[{os.stat(used['path']).st_ino}]", used
            assert ptys({proc.pid} | descendants(proc.pid)) - pts_before  # shells started, on ptys
            if pool:
                assert used["opened"] > info["nodes"], "the socket cap never closed a socket"
                assert used["shells"] == 1  # capped at one: the ping's shell was stopped for the next
            else:
                assert used["shells"] == len({"h-madrid", used["node"]})
        (p8, t8, n8), (p16, t16, n16) = added[8], added[16]
        assert n16 > 3 * n8  # two sizes far apart
        # the same constant whatever the size: the namespace holder, the route worker and a delay daemon
        # shard per core
        assert p8 == p16 <= 2 + (os.cpu_count() or 1) and t8 == t16 == 0, added
        # kill -9 of the runner; then what a user does: satnetem clean --run-id
        proc = runs[16]
        run_id = f"scale16-{os.getpid()}"
        holder = info["holder"]
        _, inodes = find_ours(run_id)
        assert len(inodes) == n16
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10  # the holder dies with its runner, before any clean
        while alive(holder) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(holder)
        r = subprocess.run([sys.executable, "-m", "emulator.cli", "clean", "--run-id", run_id], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert find_ours(run_id) == (set(), set())
        assert not alive(holder)
        deadline = time.monotonic() + 30  # the kernel frees namespaces asynchronously
        while time.monotonic() < deadline:
            live = set()
            for d in os.listdir("/proc"):
                if d.isdigit():
                    try:
                        live.add(os.stat(f"/proc/{d}/ns/net").st_ino)
                    except OSError:
                        pass
            if not live & inodes:
                break
            time.sleep(0.2)
        assert not live & inodes, "a process still lives in one of the run's namespaces"
        assert "satnetem-netns" not in Path("/proc/self/mountinfo").read_text()
        assert not re.search(rf"{run_id}", " ".join(p.name for p in Path("/run/satnetem").glob("*"))
                             if Path("/run/satnetem").is_dir() else "")
    finally:
        for n, proc in runs.items():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            clean(f"scale{n}-{os.getpid()}")
