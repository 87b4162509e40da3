"""Ray on three fake hosts (emulator.cluster.raylab): a Ray node started inside each fake host's namespace
with its underlay address, token authentication on, one actor per host pinned by the host's resource.

Where each actor runs is checked against the lab, not against what Ray says: its source address toward the
head must be its fake host's underlay address and its network namespace the fake host's (inode of the
namespace file); a driver without the token must be refused by the cluster (InvalidAuthToken from the GCS);
every port Ray listens on (read with ss) is reachable from another host over the underlay and from no other
interface (the guard of ``satnetem cluster start``); after the teardown no process is left in any of the lab's
namespaces. 50-70 s, most of it Ray's start, the refused driver's retries and the refused connections' 1 s
timeouts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulator.clean import find_ours
from emulator.cluster.lab import FakeHosts, LabConfig
from emulator.cluster.raylab import RayLab
from topologies.errors import ApplyError

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_lab():
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("ray is not installed (install.sh installs satnetem[cluster])", pytrace=False)
        pytest.skip("ray is not installed: pip install -e .[cluster]")
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with FakeHosts(f"t-ray-{os.getpid()}", LabConfig(n_hosts=3)) as lab:
        with RayLab(lab) as rl:
            yield lab, rl
        inside, _ = find_ours(lab.run_id)
        assert inside == {lab.holder.pid}, f"left in the lab's namespaces: {sorted(inside)}"


def test_one_actor_per_fake_host(ray_lab):
    import ray

    lab, rl = ray_lab
    got = rl.probe()
    clocks = ", ".join(f"{a['clock']['offset_ms']:+.3f} +- {a['clock']['bound_ms']:.3f}" for a in got["agents"])
    print(f"ray start {rl.start_s}, probe: connect {got['connect_s']:.2f} s, actors {got['actors_s']:.2f} s, "
          f"clock offsets ms {clocks}")
    assert got["nodes"] == 3
    for h, agent in enumerate(got["agents"]):
        assert agent["addr"] == lab.address(h)
        assert agent["netns"] == os.stat(lab.host_path(h)).st_ino
        assert (agent["python"], agent["ray"]) == (platform.python_version(), ray.__version__)
        # the fake hosts share this machine's clock: the true offset is 0, which the estimate must bound
        c = agent["clock"]
        assert abs(c["offset_ms"]) <= c["bound_ms"] + 0.001 and c["bound_ms"] < 50, c
    assert len({a["pid"] for a in got["agents"]}) == 3


def test_a_driver_without_the_token_is_refused(ray_lab):
    # a client with authentication off, as anyone who reaches the head's port: the GCS refuses its first RPC
    # (the client retries for ~20 s first). A wrong token is refused the same way (checked by hand: 21.6 s).
    _, rl = ray_lab
    with pytest.raises(ApplyError, match="RPC error: InvalidAuthToken"):
        rl.probe(token="none")


#: connects to ADDR at each port given (1 s each) and prints the ports that accepted, as JSON
CONNECT = """
import json, socket, sys
ok = []
for port in map(int, sys.argv[2:]):
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.connect((sys.argv[1], port))
        ok.append(port)
    except OSError:
        pass
    finally:
        s.close()
print(json.dumps(ok))
"""


def listening(lab: FakeHosts, h: int) -> set[int]:
    """TCP ports of the sockets listening in fake host ``h`` on an address other than the loopback's."""
    out = lab.run(lab.host_name(h), ["ss", "-Hltn"]).stdout
    ports = set()
    for line in out.splitlines():
        local = line.split()[3]
        addr, _, port = local.rpartition(":")
        if not addr.startswith(("127.", "[::1]")):
            ports.add(int(port))
    return ports


def connects(prefix: list[str], addr: str, ports: list[int]) -> set[int]:
    r = subprocess.run([*prefix, sys.executable, "-c", CONNECT, addr, *map(str, ports)], capture_output=True,
                       text=True, timeout=5 + 2 * len(ports), check=True)
    return set(json.loads(r.stdout))


def test_rays_ports_are_reachable_on_the_cluster_interface_only(ray_lab):
    """Ray 2.60 listens on every address of a host; the guard (emulator.cluster.raynode, as ``satnetem cluster
    start`` puts it up) keeps its ports to the cluster's interface and lo. Host 0 gets a second interface, to an
    "outside" namespace: every port Ray listens on in host 0 (read with ss: not what Ray or the guard says) is
    refused from outside and answers from host 1 over the underlay; with the guard taken down, the outside
    reaches them (the check can fail), and it comes back up."""
    from emulator.cluster import raynode

    lab, rl = ray_lab
    ports = sorted(listening(lab, 0))
    p = raynode.RayPorts()
    covered = set(p.singles()) | set(range(p.worker_min, p.worker_max + 1))
    assert ports and raynode.RayPorts().gcs in ports, ports
    assert set(ports) <= covered, f"Ray listens outside the guarded ports: {sorted(set(ports) - covered)}"
    outside = f"t-outside-{os.getpid()}"
    h0 = ["nsenter", f"--net={lab.host_path(0)}", "--"]
    out_ns = ["ip", "netns", "exec", outside]
    subprocess.run(["ip", "netns", "add", outside], check=True)
    try:
        subprocess.run([*h0, "ip", "link", "add", "out0", "type", "veth", "peer", "name", "in0", "netns", outside],
                       check=True)
        subprocess.run([*h0, "ip", "addr", "add", "192.0.2.1/24", "dev", "out0"], check=True)
        subprocess.run([*h0, "ip", "link", "set", "out0", "up"], check=True)
        subprocess.run([*out_ns, "ip", "addr", "add", "192.0.2.2/24", "dev", "in0"], check=True)
        subprocess.run([*out_ns, "ip", "link", "set", "in0", "up"], check=True)
        subprocess.run([*out_ns, "ip", "link", "set", "lo", "up"], check=True)
        # the outside aims at host 0's address on its own side and at its cluster address (routed through it)
        subprocess.run([*out_ns, "ip", "route", "add", lab.address(0), "via", "192.0.2.1"], check=True)

        def from_outside(ports: list[int]) -> set[int]:
            return connects(out_ns, "192.0.2.1", ports) | connects(out_ns, lab.address(0), ports)

        h1 = ["nsenter", f"--net={lab.host_path(1)}", "--"]
        assert connects(h1, lab.address(0), ports) == set(ports)  # the cluster's interface: every port
        assert from_outside(ports) == set()  # another interface: none
        # broken on purpose: the guard down, the outside reaches Ray (the ports bound to every address at either
        # address, the runtime-env agent's, bound to the cluster address, there)
        assert raynode.guard_off(h0)
        try:
            assert from_outside(ports) == set(ports)
        finally:
            rl.guard(0)
        assert from_outside([p.gcs]) == set()
    finally:
        subprocess.run([*h0, "ip", "link", "del", "out0"], check=False)
        subprocess.run(["ip", "netns", "del", outside], check=False)


def test_the_labs_provisioning_starts_the_nodes_and_cluster_stop_ends_them(tmp_path):
    """vagrant/cluster.sh, the multi-machine lab's provisioner, run as the lab runs it on two fake hosts of their
    own (a head and a worker). The fake hosts share this machine's files and have no service manager, so each
    one's /etc is a folder here and the script only writes chrony's and systemd's files there: it sets the lab
    interface's MTU to 1550, installs the token root-only, points the worker's chrony at the head and lets the
    head serve the lab's subnet, and writes a unit that ``systemd-analyze verify`` passes without a word. The
    test then does what systemd would: it runs the unit's ExecStart in each host, which starts the Ray node with
    the guard up, and a driver places an actor on each host by its resource. On the worker the unit's
    ExecStopPost (``satnetem cluster stop``) ends every process of its node and removes the guard; on the head
    SIGTERM ends ExecStart's process (the node, the guard), and ExecStopPost finds nothing left. Then
    ``satnetem cluster start`` as a user types it: a token readable by others is refused in one line with
    nothing started; with ``--block`` it stays until SIGTERM, then leaves nothing."""
    from emulator.cluster import raynode

    if importlib.util.find_spec("ray") is None or os.geteuid() != 0:
        pytest.skip("needs ray and root")
    venv = Path(sys.executable).parent.parent
    satnetem = str(venv / "bin" / "satnetem")
    token = tmp_path / "token"
    token.write_text("ab" * 32)
    token.chmod(0o600)
    etcs = [tmp_path / f"etc{h}" for h in range(2)]  # each fake host's /etc
    env = {**os.environ, "SATNETEM_VENV": str(venv), "SATNETEM_LAB_TOKEN": str(token), "SATNETEM_LAB_SERVICES": "files"}
    cfg = LabConfig(n_hosts=2, delay_ms=0.0, mtu_bytes=1600, subnet="172.31.214.0/24")
    with FakeHosts(f"t-rn-{os.getpid()}", cfg) as lab:
        inside = [["nsenter", f"--net={lab.host_path(h)}", "--"] for h in range(2)]
        head = lab.address(0)

        def table(h: int) -> bool:
            return subprocess.run([*inside[h], "nft", "list", "table", "inet", raynode.GUARD_TABLE],
                                  capture_output=True, check=False).returncode == 0

        def stop(h: int) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*inside[h], satnetem, "cluster", "stop", "--address", lab.address(h)],
                                  capture_output=True, text=True, timeout=60, check=False)

        services: list[subprocess.Popen[bytes]] = []
        stop_post: list[list[str]] = []
        try:
            for h, role in enumerate(("head", "worker")):
                r = subprocess.run([*inside[h], "bash", str(ROOT / "vagrant" / "cluster.sh"), role, lab.address(h),
                                    head, str(h)], env={**env, "SATNETEM_LAB_ETC": str(etcs[h])}, capture_output=True,
                                   text=True, timeout=180, check=False)
                assert r.returncode == 0 and "nothing started" in r.stdout, r.stdout[-1500:] + r.stderr[-1500:]
                assert not table(h) and raynode.marked_pids(lab.address(h)) == []
                [link] = json.loads(lab.run(lab.host_name(h), ["ip", "-j", "link", "show", "ul0"]).stdout)
                assert link["mtu"] == 1550, link
                tok = etcs[h] / "satnetem" / "ray-token"
                assert tok.read_text() == token.read_text() and tok.stat().st_mode & 0o777 == 0o600
                assert tok.parent.stat().st_mode & 0o777 == 0o700
                chrony = (etcs[h] / "chrony" / "conf.d" / "satnetem.conf").read_text()
                assert chrony == ("allow 172.31.214.0/24\nlocal stratum 10\n" if role == "head" else
                                  f"server {head} iburst prefer\n"), chrony
                unit = etcs[h] / "systemd" / "system" / "satnetem-ray.service"
                v = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                                   timeout=60, check=False)
                assert v.returncode == 0 and not (v.stdout + v.stderr).strip(), v.stdout + v.stderr
                keys = dict(line.split("=", 1) for line in unit.read_text().splitlines() if "=" in line)
                start_argv = shlex.split(keys["ExecStart"])
                assert start_argv[:3] == [satnetem, "cluster", "start"] and "--block" in start_argv, start_argv
                stop_post.append(shlex.split(keys["ExecStopPost"]))
                # what systemd does with the unit: its ExecStart in the foreground
                services.append(subprocess.Popen([*inside[h], *start_argv], stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL))
                port = raynode.RayPorts().gcs if role == "head" else raynode.RayPorts().node_manager
                deadline = time.monotonic() + 90
                while port not in listening(lab, h) and time.monotonic() < deadline:
                    time.sleep(0.5)
                assert port in listening(lab, h) and table(h) and services[h].poll() is None
            probe = subprocess.run([*inside[0], sys.executable, "-m", "emulator.cluster.raylab", f"{head}:6379", "2"],
                                   env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)},
                                   capture_output=True, text=True, timeout=180, check=False, cwd=str(ROOT))
            assert probe.returncode == 0, probe.stderr[-1500:]
            got = json.loads(probe.stdout.strip().splitlines()[-1])
            assert got["nodes"] == 2 and [a["addr"] for a in got["agents"]] == [lab.address(0), lab.address(1)]
            for h in (1, 0):
                pids = raynode.marked_pids(lab.address(h))
                assert pids and all(os.stat(f"/proc/{p}/ns/net").st_ino == os.stat(lab.host_path(h)).st_ino
                                    for p in pids)
                if h == 0:  # systemctl stop: SIGTERM to the main process, which ends the node and the guard
                    services[h].send_signal(signal.SIGTERM)
                    services[h].wait(timeout=60)
                r = subprocess.run([*inside[h], *stop_post[h]], capture_output=True, text=True, timeout=60,
                                   check=False)
                ended = re.search(r"ended (\d+) processes", r.stdout)
                assert r.returncode == 0 and ended, r.stdout + r.stderr
                if h == 1:  # the unit's ExecStopPost alone ends every process of the node (and ExecStart's
                    # process, its ray start gone, removes the guard too: whichever comes first)
                    assert int(ended.group(1)) >= len(pids), r.stdout
                    services[h].wait(timeout=60)
                deadline = time.monotonic() + 20
                while raynode.marked_pids(lab.address(h)) and time.monotonic() < deadline:
                    time.sleep(0.5)
                assert raynode.marked_pids(lab.address(h)) == [] and not table(h) and listening(lab, h) == set()
            # satnetem cluster start by hand: a token others may read is refused, nothing started, no table
            start = [*inside[0], satnetem, "cluster", "start", "--head", "--address", head, "--token", str(token)]
            token.chmod(0o644)
            r = subprocess.run(start, capture_output=True, text=True, timeout=60, check=False)
            assert r.returncode == 2 and r.stderr.count("\n") == 1 and "readable by root only" in r.stderr, r.stderr
            assert raynode.marked_pids(head) == [] and not table(0)
            token.chmod(0o600)
            # --block: in the foreground until SIGTERM, which ends the node and removes the guard
            p = subprocess.Popen([*start, "--block"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 90
            while raynode.RayPorts().gcs not in listening(lab, 0) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert raynode.RayPorts().gcs in listening(lab, 0) and table(0) and p.poll() is None
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)
            deadline = time.monotonic() + 20
            while raynode.marked_pids(head) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert raynode.marked_pids(head) == [] and not table(0)
        finally:
            for p in services:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for h in range(2):
                stop(h)
