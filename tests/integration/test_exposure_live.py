"""Nothing of a run is reachable that should not be (issue 15), checked from the kernel's own tables
while a small run plays, never from what the run says about itself:

- no process of the run listens in the host's network namespace: ``ss -lntupx`` before and during the
  run, and the run's own socket inodes looked up in the host's /proc/net/{tcp,tcp6,udp,udp6,unix};
- no abstract Unix socket, in the host's namespace or a node's;
- a Unix socket with a path (a routing daemon's control socket) is mode 0600, and every file the run
  writes (results, state file) is not group- or world-writable, with the caller's umask at 000;
- inside the nodes, a listening TCP or bound UDP socket is bound to an address of its own node
  (``addresses.json`` and 127/8), never to a wildcard.

The run's processes are found independently of the product: the runner and its descendants, and every
process in one of the namespaces its holder bind-mounted.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]
NETNS_MOUNTS = "/run/satnetem-netns"  # emulator.kernel.holder.MOUNT_DIR, restated: the test reads it itself

SCENARIO = """
name = "exposure"
[time]
start = "2023-07-18T12:00:00Z"
duration_s = 10
step_s = 1.0
[[constellation.shells]]
name = "s"
planes = 12
sats_per_plane = 12
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
[[compute]]
name = "dc-1"
satellite = "sat-1-1"
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
[[traffic]]
kind = "iperf3-udp"
src = "h-new-york"
dst = "h-london"
rate_mbps = 1
[[traffic]]
kind = "request"
src = "h-london"
dst = "dc-1"
rate_pps = 2
"""
N_FLOWS = 4


# ------------------------------------------------------------------------------- the kernel's tables

def ss_listening() -> set[tuple[str, str, frozenset[int]]]:
    """(netid, local address, pids) of every listening socket ``ss -lntupx`` shows in this namespace."""
    out = subprocess.run(["ss", "-lntupxH"], capture_output=True, text=True, check=True).stdout
    rows = set()
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 5:
            rows.add((f[0], f[4], frozenset(int(p) for p in re.findall(r"pid=(\d+)", line))))
    return rows


def socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if m:
                out.add(int(m.group(1)))
    except OSError:
        pass
    return out


def hex_addr(h: str) -> str:
    """/proc/net/{tcp,udp}[6]'s ``ADDR:PORT`` hex (host-order words) as an IP address."""
    a = bytes.fromhex(h.split(":")[0])
    if len(a) == 4:
        return socket.inet_ntop(socket.AF_INET, a[::-1])
    return socket.inet_ntop(socket.AF_INET6, b"".join(a[i:i + 4][::-1] for i in range(0, 16, 4)))


def inet_sockets(pid: int) -> list[tuple[str, str, str, int]]:
    """(table, local address, state, inode) of every TCP/UDP socket in ``pid``'s network namespace that
    takes connections or datagrams from anyone: TCP LISTEN (0A), UDP unconnected (07)."""
    out = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if (table.startswith("tcp") and f[3] == "0A") or (table.startswith("udp") and f[3] == "07"):
                out.append((table, hex_addr(f[1]), f[3], int(f[9])))
    return out


def unix_sockets(pid: int) -> dict[int, str]:
    """{inode: path} of the Unix sockets in ``pid``'s network namespace ('' unnamed, '@...' abstract)."""
    out = {}
    try:
        lines = Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        out[int(f[6])] = f[7] if len(f) > 7 else ""
    return out


# ---------------------------------------------------------------------------------- the run's processes

def processes() -> dict[int, tuple[int, int]]:
    """{pid: (parent pid, network namespace inode)}."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                out[int(d)] = (ppid, os.stat(f"/proc/{d}/ns/net").st_ino)
            except (OSError, ValueError, IndexError):
                pass
    return out


def run_processes(root_pid: int, holder_pid: int) -> tuple[dict[int, int], dict[int, str]]:
    """{pid: netns inode} of the run's processes (descendants of ``root_pid`` and everything in a
    namespace the holder holds), and {netns inode: node name} of those namespaces."""
    ns_node = {}
    for name in os.listdir(f"/proc/{holder_pid}/root{NETNS_MOUNTS}"):
        ns_node[os.stat(f"/proc/{holder_pid}/root{NETNS_MOUNTS}/{name}").st_ino] = name
    procs = processes()
    ours = {root_pid}
    grew = True
    while grew:
        new = {p for p, (pp, _) in procs.items() if pp in ours} - ours
        grew, ours = bool(new), ours | new
    ours |= {p for p, (_, ino) in procs.items() if ino in ns_node}
    return {p: procs[p][1] for p in ours if p in procs}, ns_node


def node_addresses(out: Path) -> dict[str, set[str]]:
    owners = json.loads((out / "addresses.json").read_text())
    by_node: dict[str, set[str]] = {}
    for addr, who in owners.items():
        for node in who.values():
            by_node.setdefault(node, set()).add(addr)
    return by_node


def loose_mode(path: Path) -> bool:
    return bool(path.lstat().st_mode & 0o022)


# ---------------------------------------------------------------------------------------------- the test

def test_a_run_exposes_nothing(tmp_path):
    scenario = tmp_path / "exposure.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "results"
    run_id = f"expose-{os.getpid()}"
    host_ns = os.stat("/proc/self/ns/net").st_ino
    before = ss_listening()
    # umask 000: whatever a user's shell has, the run's files and sockets must still be closed to others
    proc = subprocess.Popen([sys.executable, "-m", "emulator.cli", "run", str(scenario), "-o", str(out),
                             "--run-id", run_id], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, umask=0)
    try:
        state = Path(f"/run/satnetem/{run_id}.json")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # every flow started, services too
            try:
                if len(json.loads((out / "flows.json").read_text())) >= N_FLOWS:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        time.sleep(1.0)  # the iperf3 and request clients connect
        assert proc.poll() is None, "the run ended before its flows were seen"
        during = ss_listening()
        holder = json.loads(state.read_text())["holder"]
        state_loose = loose_mode(state)
        run_dir = Path(f"/run/satnetem/{run_id}")  # daemons' and compute nodes' folders, when there are any
        run_dir_loose = [str(p) for p in [run_dir, *run_dir.rglob("*")] if p.exists() and loose_mode(p)]
        pids, ns_node = run_processes(proc.pid, holder)
        sockets = {p: socket_inodes(p) for p in pids}
        in_host = set().union(*(sockets[p] for p, ino in pids.items() if ino == host_ns))
        host_inet = [s for s in inet_sockets(os.getpid()) if s[3] in in_host]
        host_unix = {i: path for i, path in unix_sockets(os.getpid()).items() if i in in_host}
        nodes_inet, nodes_unix = [], {}
        for ns in {ino for ino in pids.values() if ino in ns_node}:
            members = [p for p, ino in pids.items() if ino == ns]
            mine = set().union(*(sockets[p] for p in members))
            nodes_inet += [(ns_node[ns], *s) for s in inet_sockets(members[0]) if s[3] in mine]
            nodes_unix |= {i: path for i, path in unix_sockets(members[0]).items() if i in mine}
        text, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run([sys.executable, "-m", "emulator.cli", "clean", "--run-id", run_id], cwd=REPO,
                       capture_output=True, timeout=60)
    assert proc.returncode == 0, text[-3000:]

    # the run was seen working: processes in nodes with sockets, so the checks below looked at something
    assert len(ns_node) > 100 and len({ns_node[i] for i in pids.values() if i in ns_node}) >= 3
    assert any(node == "dc-1" for node, *_ in nodes_inet), nodes_inet  # the compute service listened

    new = {(netid, local) for netid, local, who in during - before if who & pids.keys()}
    assert not new, f"the run listens in the host's namespace: {sorted(new)}"
    assert not host_inet, f"the run's sockets take connections in the host's namespace: {host_inet}"
    named = {**host_unix, **nodes_unix}
    assert not [p for p in named.values() if p.startswith("@")], f"abstract sockets: {named}"
    for path in (p for p in named.values() if p):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, f"{path} is {oct(os.stat(path).st_mode)}"

    addrs = node_addresses(out)
    wild = [s for s in nodes_inet if s[2] in ("0.0.0.0", "::")]
    assert not wild, f"services bound to every address of their node: {wild}"
    foreign = [s for s in nodes_inet if not s[2].startswith("127.") and s[2] not in addrs.get(s[0], set())]
    assert not foreign, f"services bound to an address that is not their node's: {foreign}"

    assert not state_loose, "the state file is group- or world-writable"
    assert not run_dir_loose, f"group- or world-writable under /run/satnetem/{run_id}: {run_dir_loose[:10]}"
    loose = [p for p in [out, *out.rglob("*")] if loose_mode(p)]
    assert not loose, f"group- or world-writable under the results: {[str(p) for p in loose[:10]]}"


def test_routing_daemons_control_sockets_are_0600_with_umask_000(make_emulation):
    """BIRD's control sockets (one per router, a path under /run/satnetem/<run_id>/bird) are mode 0600
    and in a 0700 folder even when the caller's umask lets everyone write."""
    from handmade import grid_timeline

    import routing.ospf  # noqa: F401  (registers "ospf")

    old = os.umask(0)
    try:
        emu = make_emulation(grid_timeline(), protocol="ospf")
    finally:
        os.umask(old)
    d = emu.protocol.daemons
    pids = list(d.pids.values())
    assert len(pids) == 18
    named = {}
    for pid in pids:  # each daemon's own sockets, from its namespace's table
        mine = socket_inodes(pid)
        named |= {i: p for i, p in unix_sockets(pid).items() if i in mine and p}
    assert len(named) == len(pids), named  # one control socket each, found in the kernel's tables
    assert not [p for p in named.values() if p.startswith("@")], named
    modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in named.values()}
    assert set(modes.values()) == {0o600}, {p: oct(m) for p, m in modes.items()}
    assert stat.S_IMODE(os.stat(d.dir).st_mode) == 0o700
