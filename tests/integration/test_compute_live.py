"""Compute node services (issue 14): CPU share enforced by cgroups, unprivileged, private, small, and told
where they are.

Two namespaces made by the emulator's namespace holder: ``dc`` (the compute node, 10.81.1.2) and ``gs`` (its
client, 10.81.1.1) on one veth. Requests are timed by the client; what they should cost comes from the CFS
quota the test computes itself, not from the service's report.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from emulator.kernel.cgroups import PERIOD_US, detect, tasks_in
from emulator.kernel.holder import Holder
from emulator.netns import iproute_in
from emulator.network import SYSCTLS
from emulator.traffic.compute import BINARY, ComputeServices, NodeService
from topologies.errors import ConfigError

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not BINARY.is_file(), reason=f"{BINARY} not built (./install.sh)")]

_TAG = f"t-compute-{os.getpid()}"
DC, GS = "10.81.1.2", "10.81.1.1"
CLONE_NEWNET = 0x40000000


def _socket_in(ns_path: str, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket made inside the namespace at ``ns_path`` (by a thread that joins it and then ends)."""
    out: list[socket.socket | BaseException] = []

    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(ns_path, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                out.append(OSError(ctypes.get_errno(), "setns"))
                return
            out.append(socket.socket(family, socket.SOCK_STREAM))
        finally:
            os.close(fd)

    t = threading.Thread(target=make)
    t.start()
    t.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


class _Conn(http.client.HTTPConnection):
    """A kept-alive HTTP connection whose socket lives in a namespace."""

    def __init__(self, ns_path: str, host: str, port: int = 8080) -> None:
        super().__init__(host, port, timeout=30)
        self.ns_path = ns_path

    def connect(self) -> None:
        s = _socket_in(self.ns_path)
        s.settimeout(self.timeout)
        s.connect((self.host, self.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s

    def get(self, path: str) -> tuple[int, bytes, float]:
        t0 = time.perf_counter()
        self.request("GET", path)
        r = self.getresponse()
        body = r.read()
        return r.status, body, time.perf_counter() - t0


@pytest.fixture(scope="module")
def pair():
    holder = Holder(_TAG)
    try:
        holder.start()
        holder.create(["dc", "gs"], [SYSCTLS])
        iprs = {n: iproute_in(holder.path(n), n) for n in ("dc", "gs")}
        fd = os.open(holder.path("dc"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            iprs["gs"].link("add", ifname="gs-dc", kind="veth", peer={"ifname": "dc-gs", "net_ns_fd": fd})
        finally:
            os.close(fd)
        for n, ifname, addr in (("gs", "gs-dc", GS), ("dc", "dc-gs", DC)):
            ipr = iprs[n]
            for name in (ifname, "lo"):
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
            ipr.addr("add", index=ipr.link_lookup(ifname=ifname)[0], address=addr, prefixlen=24)
        for ipr in iprs.values():
            ipr.close()
        yield holder
    finally:
        holder.close()


@pytest.fixture
def services(pair):
    svc = ComputeServices(_TAG, work_ms=1.0)
    try:
        svc.start([NodeService("dc", pair.path("dc"), DC, cpu_share=1.0, memory_mb=64)])
        yield svc
    finally:
        left = svc.stop()
        assert not left, f"cgroups left behind: {left}"
    for d in (svc.groups.cpu_root, svc.groups.memory_root):
        assert not d.exists(), f"{d} still exists after stop"
    assert not svc.dir.parent.exists()


def test_throttled_service_time_grows_as_cpu_share_falls(pair, services):
    """A request of W ms of CPU at share s cannot finish in less than W/s - one period (the group gets at
    most s x period of CPU per period); with the CPU otherwise available it takes about W/s."""
    work_ms, period_ms = 120.0, PERIOD_US / 1e3
    # the host is shared (other runs, benchmarks): the run group's highest weight lets the node have what its
    # quota allows whenever it wants it, so the times below are the quota's doing and not the load's
    services.groups.set_weight(10_000 if services.groups.v2 else 262_144)
    conn = _Conn(pair.path("gs"), DC)
    conn.get("/compute?id=warm&work_ms=1")
    took: dict[float, float] = {}
    for share in (1.0, 0.5, 0.25):
        services.set_cpu_share("dc", share)
        assert services.groups.cpu_share("dc") == pytest.approx(share)  # read back from the kernel's files
        times = []
        for k in range(3):
            status, body, t_s = conn.get(f"/compute?id={k}&work_ms={work_ms:g}")
            assert status == 200, body
            assert json.loads(body)["cpu_ms"] >= work_ms
            times.append(t_s * 1e3)
        took[share] = statistics.median(times)
    conn.close()
    print(f"\nservice time of {work_ms:g} ms of CPU (client-timed median of 3): "
          + ", ".join(f"share {s:g}: {t:.1f} ms (quota bound >= {work_ms / s - period_ms:.0f})"
                      for s, t in took.items())
          + f"; ratios to share 1: {took[0.5] / took[1.0]:.2f} (expect 2), {took[0.25] / took[1.0]:.2f} (expect 4)")
    for share, t_ms in took.items():
        assert t_ms >= work_ms / share - period_ms, f"share {share}: {t_ms:.1f} ms, faster than its quota allows"
    assert took[0.25] > took[0.5] > took[1.0]
    # the two throttled shares are bound by their quotas, not by the shared machine: their ratio is 2
    assert 1.6 <= took[0.25] / took[0.5] <= 2.4, took
    for share in (0.5, 0.25):
        assert took[share] <= 1.25 * work_ms / share + 2 * period_ms, took


def test_service_runs_unprivileged_private_small_in_its_groups(pair, services):
    pid = services.pids["dc"]
    status = Path(f"/proc/{pid}/status").read_text()
    uid = [int(x) for x in next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]]
    assert uid == [services.uid] * 4 and services.uid != 0
    assert "NoNewPrivs:\t1" in status
    assert os.stat(f"/proc/{pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(pair.path("dc")).st_ino
    # its groups hold it and nothing else, and the memory limit is the node's 64 MB
    for f in services.groups.attach_files("dc"):
        assert Path(f).read_text().split() == [str(pid)], f
    groups = services.groups
    limit = (groups.memory_root / "dc" / ("memory.max" if groups.v2 else "memory.limit_in_bytes")).read_text()
    assert int(limit) == 64 * 2**20
    # bound to the node's address only: the node's loopback is refused, its address answers
    s = _socket_in(pair.path("dc"))
    with pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", 8080))
    s.close()
    # read-only node folder, and nothing else of /run/satnetem visible
    mounts = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
    node = [m for m in mounts if m[4] == "/run/satnetem/node"]
    assert node and "ro" in node[-1][5].split(","), node
    rss_kb, pss_kb = services.memory()["dc"]
    print(f"\nservice RSS {rss_kb} kB, PSS {pss_kb} kB ({detect().describe()})")
    assert rss_kb <= 5 * 1024


def test_whereami_is_current_inside_the_node(pair, services):
    conn = _Conn(pair.path("gs"), DC)
    for step in (0, 1):
        view = {"step": step, "satellite": "sat-0-0", "sunlight": "umbra" if step else "sunlit"}
        services.write_whereami({"dc": view})
        status, body, _ = conn.get("/whereami")
        assert status == 200 and json.loads(body) == view
    conn.close()


def test_clean_removes_a_runs_services_and_groups(pair):
    """A run that died without stopping its services: ``satnetem clean <run_id>`` kills them and removes
    their cgroups and node folders."""
    from emulator.clean import clean

    run_id = f"{_TAG}-left"
    svc = ComputeServices(run_id, work_ms=1.0)
    try:
        svc.start([NodeService("dc", pair.path("dc"), DC, cpu_share=0.5)])
        pid = svc.pids["dc"]
        roots = [svc.groups.cpu_root, svc.groups.memory_root]
        assert all(r.is_dir() for r in roots)
        report = clean(run_id)
        assert report.ok, report
        assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        assert not any(r.exists() for r in roots), roots
        assert sorted(report.cgroups_removed) == sorted(str(r) for r in roots)
        assert not svc.dir.exists()
    finally:
        svc.stop()


def test_power_states_throttle_and_stop_the_node(pair, services):
    """topologies.power's states at run time: throttled runs at throttle_share of the node's share (read back
    from the kernel's files), stopped answers 503 to work, normal restores both."""
    conn = _Conn(pair.path("gs"), DC)
    assert services.apply_power({"dc": "throttled"}, 0.5) == {"dc": 0.5}
    assert services.groups.cpu_share("dc") == pytest.approx(0.5)
    assert conn.get("/compute?id=1&work_ms=1")[0] == 200
    services.apply_power({"dc": "stopped"}, 0.5)
    assert services.groups.cpu_share("dc") == pytest.approx(0.05)
    status, body, _ = conn.get("/compute?id=2&work_ms=1")
    assert status == 503 and json.loads(body) == {"error": "stopped"}
    assert conn.get("/whereami")[0] in (200, 503)  # not work: still answered
    assert services.apply_power({"dc": "stopped"}, 0.5) == {}  # unchanged: nothing touched
    services.apply_power({"dc": "normal"}, 0.5)
    assert services.groups.cpu_share("dc") == pytest.approx(1.0)
    assert conn.get("/compute?id=3&work_ms=1")[0] == 200
    conn.close()


_API_SCENARIO = """name = "compute-api"
seed = 1
[time]
start = "2024-03-01T00:00:00Z"
duration_s = 6
step_s = 1.0
[[constellation.shells]]
name = "shell"
planes = 6
sats_per_plane = 6
altitude_km = 550
inclination_deg = 53
[[ground.sites]]
name = "gs-london"
lat_deg = 51.5
lon_deg = -0.13
[[compute]]
name = "dc-a"
satellite = "sat-0-0"
cpu_share = 0.5
memory_mb = 32
[emulation]
shaper = "userspace"
"""


def test_scripting_api_starts_services_and_changes_a_share_live(tmp_path):
    """Through the scripting API, on a built network with the userspace shaper: the node's service runs in
    its namespace at its scenario share, set_cpu_share changes it, whereami.json follows the applied steps,
    and the shaper's delay daemon is in none of the run's groups."""
    from emulator.api import open_emulation
    from topologies.whereami import WhereAmI

    path = tmp_path / "compute-api.toml"
    path.write_text(_API_SCENARIO)
    with open_emulation(str(path), run_id=f"t-compute-api-{os.getpid()}") as emu:
        svc = emu.start_compute()
        pid = svc.pids["dc-a"]
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(emu.node("dc-a").ns_path).st_ino
        assert svc.groups.cpu_share("dc-a") == pytest.approx(0.5)
        emu.set_cpu_share("dc-a", 0.2)
        assert svc.groups.cpu_share("dc-a") == pytest.approx(0.2)
        with pytest.raises(ConfigError):
            emu.set_cpu_share("gs-london", 0.5)
        daemon = emu.emulation.shaper.pids
        assert daemon and not set(daemon) & tasks_in([svc.groups.cpu_root, svc.groups.memory_root])
        emu.step()
        emu.step()
        want = WhereAmI(emu.timeline, [emu.timeline.node_index("dc-a")]).views(2)["dc-a"]
        f = svc.node_dir("dc-a") / "whereami.json"
        deadline = time.monotonic() + 5
        while (not f.exists() or json.loads(f.read_text())["step"] != 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads(f.read_text()) == json.loads(json.dumps(want))
        roots = [svc.groups.cpu_root, svc.groups.memory_root]
    assert not any(r.exists() for r in roots)


def test_a_run_enforces_the_planned_power_states(tmp_path):
    """A compute node in Earth's shadow with a 1 Wh battery at 45 %: the plan (topologies.power) throttles it
    and then stops it within seconds. Stepping the live network, the kernel's quota follows the planned
    state of each step (0.8 cores normal, 0.5 x 0.8 throttled, 0.05 stopped) and a stopped node refuses work
    (asked from its satellite, over the emulated access link)."""
    from emulator.api import open_emulation
    from topologies.plan import plan_scenario
    from topologies.power import NORMAL, STOPPED, THROTTLED
    from topologies.scenario import parse_scenario

    base = _API_SCENARIO.split("[[compute]]")[0].replace("duration_s = 6", "duration_s = 14")
    sun = plan_scenario(parse_scenario(base, "<test>")).sat_sunlight
    assert sun is not None
    sat = int(np.flatnonzero((sun == 2).all(axis=1))[0])  # in umbra for the whole run
    text = base + (f'[[compute]]\nname = "dc-a"\nsatellite = "sat-{sat // 6}-{sat % 6}"\ncpu_share = 0.8\n'
                   "[power]\nbattery_wh = 1.0\ninitial_pct = 45.0\nthrottle_share = 0.5\n"
                   '[emulation]\nshaper = "userspace"\n')
    path = tmp_path / "power.toml"
    path.write_text(text)
    share = {NORMAL: 0.8, THROTTLED: 0.4, STOPPED: 0.05}
    with open_emulation(str(path), run_id=f"t-compute-pw-{os.getpid()}") as emu:
        tl = emu.timeline
        assert tl.nodes[tl.node_index(f"sat-{sat // 6}-{sat % 6}")].name == tl.nodes[sat].name
        states = tl.compute_power[0].tolist()
        assert {NORMAL, THROTTLED, STOPPED} <= set(states), states  # the run passes through every state
        svc = emu.start_compute()
        f = svc.node_dir("dc-a") / "whereami.json"
        # from its satellite, one access hop away: a 36-satellite shell leaves the ground without coverage
        conn = _Conn(emu.node(tl.nodes[sat].name).ns_path, emu.address_of("dc-a"))
        seen = set()
        for k in range(tl.n_steps):
            if k:
                emu.step()
            deadline = time.monotonic() + 5
            while (not f.exists() or json.loads(f.read_text())["step"] != k) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert svc.groups.cpu_share("dc-a") == pytest.approx(share[states[k]]), (k, states[k])
            status = conn.get(f"/compute?id={k}&work_ms=1")[0]
            assert status == (503 if states[k] == STOPPED else 200), (k, states[k], status)
            seen.add(states[k])
        conn.close()
        assert seen == {NORMAL, THROTTLED, STOPPED}
