"""The qemu harness really runs commands on a stock kernel with sch_netem (boots a VM per test).

Needs root (9p passthrough of the host root), qemu-system-x86_64 and an installed kernel whose modules
include sch_netem. Outside CI a missing piece skips with the reason; with CI=true it fails.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from tests.vm import netemvm

pytestmark = [pytest.mark.root, pytest.mark.netem_vm]

TIMEOUT_S = 240.0  # generous: TCG on two shared cores, other engineers' jobs running


def _unavailable_reason() -> str | None:
    if os.environ.get("SATNETEM_IN_VM"):
        return "already inside the test VM (no nested qemu)"
    if os.geteuid() != 0:
        return "needs root (9p passthrough of the host root)"
    try:
        if __import__("shutil").which("qemu-system-x86_64") is None:
            return "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
        netemvm.find_kernel()
        netemvm.find_busybox()
    except netemvm.VmUnavailableError as e:
        return str(e)
    return None


@pytest.fixture(scope="module", autouse=True)
def _vm_available() -> None:
    reason = _unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true" and not os.environ.get("SATNETEM_IN_VM"):
        pytest.fail(f"CI=true and the netem VM cannot run: {reason}")
    pytest.skip(reason)


def _qemu_children() -> list[int]:
    """PIDs of qemu processes whose parent is this test process."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == me and comm.startswith("qemu-system"):
            found.append(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def _no_qemu_left_behind():
    yield
    left = _qemu_children()
    for pid in left:  # clean up even though the assertion below fails the test
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    assert not left, f"qemu processes left behind: {left}"


def _run(argv: list[str], cwd: str | None = None, **config) -> netemvm.VmResult:
    cfg = netemvm.VmConfig(timeout_s=config.pop("timeout_s", TIMEOUT_S), **config)
    result = netemvm.run_in_vm(argv, cfg, stream=sys.stdout, cwd=cwd)
    print(f"\n[netemvm] exit {result.exit_code}, boot {result.boot_s:.1f} s, total {result.total_s:.1f} s")
    return result


def test_exit_code_environment_and_share_reach_the_host(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import json, os, sys
        info = {
            "release": os.uname().release,
            "cwd": os.getcwd(),
            "dontwritebytecode": os.environ.get("PYTHONDONTWRITEBYTECODE"),
            "virtual_env": os.environ.get("VIRTUAL_ENV"),
            "extra": os.environ.get("SATNETEM_TEST_EXTRA"),
            "argv": sys.argv[1:],
            "netem_loaded": os.path.isdir("/sys/module/sch_netem"),
        }
        with open(os.path.join(sys.argv[1], "info.json"), "w") as f:
            json.dump(info, f)
        sys.exit(7)
    """)
    odd_arg = "it's; $(echo not-a-shell) `x` \"q\""
    result = _run([sys.executable, "-c", script, str(tmp_path), odd_arg], shares=(tmp_path,),
                  env=(("SATNETEM_TEST_EXTRA", "yes"),))
    assert result.exit_code == 7
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["release"] == netemvm.find_kernel().version
    assert info["cwd"] == os.getcwd()
    assert info["dontwritebytecode"] == "1"
    assert info["extra"] == "yes"
    assert info["argv"] == [str(tmp_path), odd_arg]  # passed as data, never through a shell
    assert info["netem_loaded"] is True
    if sys.prefix != sys.base_prefix:
        assert info["virtual_env"] == sys.prefix


NETEM_PING = textwrap.dedent("""
    import json, re, subprocess, sys
    from pyroute2 import IPRoute, NetNS, netns

    A, B = "vmtest_a", "vmtest_b"
    ENDS = ((A, "vta", "10.77.0.1"), (B, "vtb", "10.77.0.2"))

    def rtts_ms(count):
        out = subprocess.run(["ip", "netns", "exec", A, "ping", "-n", "-c", str(count), "-i", "0.05",
                              "10.77.0.2"], capture_output=True, text=True, check=True).stdout
        return [float(x) for x in re.findall(r"time=([0-9.]+) ms", out)]

    def set_delay_ms(delay_ms):
        for ns, ifname, _ in ENDS:
            with NetNS(ns) as n:
                idx = n.link_lookup(ifname=ifname)[0]
                n.tc("replace", "netem", index=idx, handle="1:", delay=int(delay_ms * 1000))

    def qdisc_kinds():
        kinds = []
        for ns, ifname, _ in ENDS:
            with NetNS(ns) as n:
                idx = n.link_lookup(ifname=ifname)[0]
                kinds += [q.get_attr("TCA_KIND") for q in n.get_qdiscs(index=idx)]
        return kinds

    netns.create(A)
    netns.create(B)
    try:
        with IPRoute() as ip:
            ip.link("add", ifname="vta", kind="veth", peer="vtb")
            ip.link("set", index=ip.link_lookup(ifname="vta")[0], net_ns_fd=A)
            ip.link("set", index=ip.link_lookup(ifname="vtb")[0], net_ns_fd=B)
        for ns, ifname, addr in ENDS:
            with NetNS(ns) as n:
                idx = n.link_lookup(ifname=ifname)[0]
                n.addr("add", index=idx, address=addr, prefixlen=24)
                n.link("set", index=idx, state="up")
                n.link("set", index=n.link_lookup(ifname="lo")[0], state="up")
        set_delay_ms(0)
        rtts_ms(5)  # warm up: ARP, caches
        base = rtts_ms(30)
        set_delay_ms(10)
        delayed = rtts_ms(30)
        result = {"base_ms": base, "delayed_ms": delayed, "kinds": qdisc_kinds()}
    finally:
        netns.remove(A)
        netns.remove(B)
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)
""")


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def test_netem_delay_on_a_veth_between_two_namespaces(tmp_path: Path) -> None:
    out = tmp_path / "ping.json"
    result = _run([sys.executable, "-c", NETEM_PING, str(out)], shares=(tmp_path,))
    assert result.exit_code == 0
    data = json.loads(out.read_text())
    assert data["kinds"] == ["netem", "netem"]
    assert len(data["base_ms"]) >= 25 and len(data["delayed_ms"]) >= 25, "pings were lost"
    base, delayed = _median(data["base_ms"]), _median(data["delayed_ms"])
    print(f"[netemvm] RTT median: 0 ms netem {base:.2f} ms, 2 x 10 ms netem {delayed:.2f} ms "
          f"(min {min(data['delayed_ms']):.2f} ms)")
    # 10 ms of netem on each side: the round trip grows by 20 ms over the same path without delay.
    assert min(data["delayed_ms"]) >= 20.0
    assert delayed - base == pytest.approx(20.0, abs=3.0)


MININET_LINE = textwrap.dedent("""
    import json, re, sys
    from mininet.link import TCLink
    from mininet.log import setLogLevel
    from mininet.net import Mininet
    from mininet.topo import Topo

    class Line(Topo):
        def build(self):
            h1 = self.addHost("h1", ip="10.0.1.1/24", defaultRoute="via 10.0.1.2")
            h2 = self.addHost("h2", ip="10.0.1.2/24")
            h3 = self.addHost("h3", ip="10.0.2.3/24", defaultRoute="via 10.0.2.2")
            self.addLink(h1, h2, delay="5ms")
            self.addLink(h2, h3, delay="5ms", params1={"ip": "10.0.2.2/24"})

    setLogLevel("warning")
    net = Mininet(topo=Line(), controller=None, link=TCLink, autoSetMacs=True)
    net.start()
    try:
        h1, h2, h3 = net.get("h1", "h2", "h3")
        h2.cmd("sysctl -qw net.ipv4.ip_forward=1")
        out = h1.cmd("ping -n -c 10 -i 0.1 10.0.2.3")
        qdiscs = h2.cmd("tc qdisc show")
    finally:
        net.stop()
    rtts = [float(x) for x in re.findall(r"time=([0-9.]+) ms", out)]
    with open(sys.argv[1], "w") as f:
        json.dump({"rtts_ms": rtts, "hosts": sorted(h.name for h in net.hosts), "qdiscs": qdiscs}, f)
""")


def test_three_node_mininet_network_with_netem_links(tmp_path: Path) -> None:
    out = tmp_path / "mininet.json"
    result = _run([sys.executable, "-c", MININET_LINE, str(out)], shares=(tmp_path,))
    assert result.exit_code == 0
    data = json.loads(out.read_text())
    assert data["hosts"] == ["h1", "h2", "h3"]
    assert "netem" in data["qdiscs"]
    assert len(data["rtts_ms"]) >= 8, f"h1 could not reach h3 through h2: {data}"
    # Two links of 5 ms each way: 20 ms round trip, plus TCG's overhead of a few ms.
    print(f"[netemvm] mininet h1->h3 RTT min {min(data['rtts_ms']):.2f} ms, "
          f"median {_median(data['rtts_ms']):.2f} ms")
    assert 20.0 <= min(data["rtts_ms"]) < 30.0


def test_failing_command_fails_and_timeout_kills_qemu() -> None:
    failed = _run([sys.executable, "-c", "raise SystemExit('deliberate failure')"])
    assert failed.exit_code == 1
    assert "deliberate failure" in failed.output
    with pytest.raises(netemvm.VmTimeoutError, match="did not report an exit code within 15 s"):
        _run(["sleep", "600"], timeout_s=15.0)
    assert _qemu_children() == []


#: The project's netem-backend tests, run inside the VM (they skip on a host kernel without sch_netem):
#: (test file relative to the checkout, pytest -k expression).
VM_SUITES = (("tests/integration/test_shaping.py", "netem"),
             ("tests/integration/test_network.py", "netem"),
             ("tests/integration/test_commands.py", "netem"))


@pytest.mark.parametrize("path, select", VM_SUITES)
def test_netem_backend_suite_passes_in_the_vm(path: str, select: str) -> None:
    checkout = netemvm.CHECKOUT
    if not (checkout / path).exists():
        pytest.skip(f"{path} not in this checkout")
    result = _run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", path, "-k", select],
                  timeout_s=600.0, cwd=str(checkout))
    assert "no sch_netem" not in result.output, "the netem tests skipped inside the VM"
    assert result.exit_code == 0, f"{path} -k {select} failed inside the VM (pytest exit {result.exit_code})"


USERSPACE_LOADS_ITS_MODULE = textwrap.dedent("""
    import json, os, re, subprocess, sys, time
    from dataclasses import replace
    from emulator.netns import iproute_in
    from emulator.shaping.base import LinkShape, Port
    from emulator.shaping.userspace import UserspaceShaper

    A, B = "vmus_a", "vmus_b"
    result = {"loaded_before": os.path.isdir("/sys/module/xt_NFQUEUE")}
    for n in (A, B):
        subprocess.run(["ip", "netns", "add", n], check=True)
    iprs = {n: iproute_in(f"/run/netns/{n}", n) for n in (A, B)}
    try:
        iprs[A].link("add", ifname="vua", kind="veth", peer={"ifname": "vub", "net_ns_fd": B})
        ports = {}
        for n, ifname, addr in ((A, "vua", "10.79.0.1"), (B, "vub", "10.79.0.2")):
            idx = iprs[n].link_lookup(ifname=ifname)[0]
            iprs[n].addr("add", index=idx, address=addr, prefixlen=24)
            iprs[n].link("set", index=idx, state="up")
            iprs[n].link("set", index=iprs[n].link_lookup(ifname="lo")[0], state="up")
            ports[n] = Port(n, f"/run/netns/{n}", ifname, idx)
        shaper = UserspaceShaper(seed=1)
        try:
            t = time.monotonic()
            shaper.prepare_nodes([(n, f"/run/netns/{n}") for n in (A, B)])
            result["prepare_s"] = time.monotonic() - t
            shape = LinkShape(delay_ms=10.0, rate_mbps=1000.0)
            shaper.set([(replace(ports[A], peer=ports[B]), shape), (replace(ports[B], peer=ports[A]), shape)],
                       iprs.__getitem__)
            out = subprocess.run(["ip", "netns", "exec", A, "ping", "-n", "-c", "20", "-i", "0.05", "10.79.0.2"],
                                 capture_output=True, text=True, check=False).stdout
            result["rtts_ms"] = [float(x) for x in re.findall(r"time=([0-9.]+) ms", out)]
            result["released"] = shaper.stats().get("released", 0)
        finally:
            shaper.close()
    finally:
        for ipr in iprs.values():
            ipr.close()
        for n in (A, B):
            subprocess.run(["ip", "netns", "del", n], check=False)
    result["loaded_after"] = os.path.isdir("/sys/module/xt_NFQUEUE")
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)
""")


def test_userspace_backend_loads_xt_nfqueue_itself(tmp_path: Path) -> None:
    """The stock 6.1 kernel does not load xt_NFQUEUE on demand for the delay daemon's inet-table rule
    (issue 12): the shaper loads it before attaching, and shaping works at once (it used to fail with
    ENOENT, or time out after 30 s with many namespaces)."""
    out = tmp_path / "userspace.json"
    result = _run([sys.executable, "-c", USERSPACE_LOADS_ITS_MODULE, str(out)], shares=(tmp_path,),
                  cwd=str(netemvm.CHECKOUT))
    assert result.exit_code == 0, "the userspace shaper failed in the VM"
    data = json.loads(out.read_text())
    print(f"[netemvm] xt_NFQUEUE before {data['loaded_before']}, after {data['loaded_after']}; attach of 2 "
          f"namespaces {data['prepare_s']:.2f} s; RTT {data['rtts_ms']}")
    assert data["loaded_before"] is False, "xt_NFQUEUE was loaded before the shaper ran: nothing was tested"
    assert data["loaded_after"] is True
    assert data["prepare_s"] < 10.0
    assert len(data["rtts_ms"]) >= 18, "pings were lost through the userspace shaper"
    assert data["released"] >= 36  # the daemon released the pings and their replies: they were held
    assert min(data["rtts_ms"]) >= 20.0  # 10 ms held on each side
