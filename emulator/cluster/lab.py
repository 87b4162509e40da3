"""Fake hosts on one machine: a cluster's hosts as network namespaces on one bridge, for tests and benches.

Each fake host is a network namespace (``host-<h>``) with one underlay interface ``ul0`` (its own IPv4
address, MTU 1550 by default: a VXLAN link keeps 1500 inside) whose other end is a port of the bridge
``br0`` in a namespace of its own (``underlay``), as hosts hang off a switch. Every host's underlay egress
is shaped with the project's own shaper (:func:`emulator.shaping.make_shaper`) to ``delay_ms`` one way,
so the underlay between two fake hosts has the delay of a real network's (1 ms by default: RTT 2 ms).

Every namespace (the fake hosts', the bridge's, and any the caller adds with :meth:`FakeHosts.namespaces`,
such as nodes' namespaces) is held by one namespace holder (:mod:`emulator.kernel.holder`) marked with the
run id: after a crash the holder dies with its parent, the namespaces with it, and the shaper's daemon
with it too; ``satnetem clean --run-id <run id>`` kills the holder and any process left in those
namespaces (a Ray node started inside a fake host, for instance). Interfaces are created and configured
through :mod:`emulator.rtnl` (no ``ip``), the bridge, the veths and every address in three batches.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from topologies.errors import ApplyError, ConfigError

from .. import rtnl
from ..clean import RUN_ID_RE
from ..kernel.holder import Holder
from ..netns import iproute_in
from ..shaping import LinkShape, Port, Shaper, make_shaper
from .vxlan import LINK_MTU, OVERHEAD_BYTES, bridge_body, link_mtu_body

log = logging.getLogger(__name__)

#: Namespace of the bridge, and names and indices of the interfaces the lab makes.
UNDERLAY_NS = "underlay"
BRIDGE = "br0"
BRIDGE_IFINDEX = 2
UNDERLAY_IFNAME = "ul0"
UNDERLAY_IFINDEX = 2
PORT_IFINDEX0 = 10  # bridge port of host h: p<h>, index PORT_IFINDEX0 + h
#: The underlay's rate, Mbit/s: far above what an emulated link carries, so only its delay matters.
UNDERLAY_RATE_MBPS = 10_000.0


@dataclass(frozen=True)
class LabConfig:
    """The fake hosts.

    Attributes
    ----------
    n_hosts : int
        Fake hosts, 1 .. 200.
    delay_ms : float
        One-way underlay delay added on each host's egress, ms, in [0, 1000] (0: the underlay is not shaped).
    mtu_bytes : int
        Underlay MTU, bytes: at least 1550 (:data:`~emulator.cluster.vxlan.OVERHEAD_BYTES` above 1500).
    subnet : str
        The underlay's IPv4 subnet; host h gets its (h + 1)-th address.
    shaper : str
        Shaping backend (``auto``, ``netem``, ``userspace``).
    seed : int
        The shaper's loss seed (no loss is set; kept for the backend's constructor).
    """

    n_hosts: int = 3
    delay_ms: float = 1.0
    mtu_bytes: int = LINK_MTU + OVERHEAD_BYTES
    subnet: str = "172.31.213.0/24"
    shaper: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.n_hosts, bool) or not isinstance(self.n_hosts, int) or not 1 <= self.n_hosts <= 200:
            raise ConfigError(f"n_hosts must be an integer in [1, 200], got {self.n_hosts!r}", key="n_hosts")
        d = self.delay_ms
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 1000:  # NaN fails too
            raise ConfigError(f"delay_ms must be a number in [0, 1000] ms, got {d!r}", key="delay_ms")
        m = self.mtu_bytes
        if isinstance(m, bool) or not isinstance(m, int) or not LINK_MTU + OVERHEAD_BYTES <= m <= 65535:
            raise ConfigError(f"mtu_bytes must be an integer in [{LINK_MTU + OVERHEAD_BYTES}, 65535] (VXLAN adds "
                              f"{OVERHEAD_BYTES} bytes to a {LINK_MTU}-byte link), got {m!r}", key="mtu_bytes")
        try:
            net = ipaddress.IPv4Network(self.subnet)
        except ValueError:
            raise ConfigError(f"subnet {self.subnet!r} is not an IPv4 network", key="subnet") from None
        if net.num_addresses - 2 < self.n_hosts:
            raise ConfigError(f"subnet {self.subnet} holds fewer than {self.n_hosts} hosts", key="subnet")


class FakeHosts:
    """``config.n_hosts`` fake hosts on a bridge (see the module docstring). A context manager.

    Parameters
    ----------
    run_id : str
        Marks the namespace holder (``satnetem clean --run-id``).
    config : LabConfig
    """

    def __init__(self, run_id: str, config: LabConfig | None = None) -> None:
        if not RUN_ID_RE.fullmatch(run_id):
            raise ConfigError(f"run id {run_id!r} must match {RUN_ID_RE.pattern}", key="run_id")
        self.run_id = run_id
        self.config = config or LabConfig()
        net = ipaddress.IPv4Network(self.config.subnet)
        self.prefix_len = net.prefixlen
        self._addr = [int(net.network_address) + h + 1 for h in range(self.config.n_hosts)]
        self.holder: Holder | None = None
        self.shaper: Shaper | None = None
        self.shaper_reason = ""
        self._ipr: dict[str, Any] = {}
        self.build_ms = 0.0

    # ----------------------------------------------------------------- lookups
    def host_name(self, h: int) -> str:
        return f"host-{h}"

    def address(self, h: int) -> str:
        """Host ``h``'s underlay IPv4 address."""
        return str(ipaddress.IPv4Address(self._addr[h]))

    def path(self, name: str) -> str:
        """Path of the namespace ``name`` (a fake host's ``host-<h>``, ``underlay``, or one of
        :meth:`namespaces`)."""
        if self.holder is None:
            raise ApplyError("the lab is not running", operation="path")
        return self.holder.path(name)

    def host_path(self, h: int) -> str:
        return self.path(self.host_name(h))

    # ----------------------------------------------------------------- life
    def __enter__(self) -> FakeHosts:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Create the namespaces, the bridge, the underlay interfaces and their addresses, and shape them."""
        t0 = time.perf_counter()
        try:
            self.holder = Holder(self.run_id)
            self.holder.start()
            n = self.config.n_hosts
            self.holder.create([UNDERLAY_NS] + [self.host_name(h) for h in range(n)])
            self._wire()
            self._shape()
        except BaseException:
            self.close()
            raise
        self.build_ms = (time.perf_counter() - t0) * 1e3
        log.info("lab %s: %d fake hosts up in %.0f ms (%s)", self.run_id, self.config.n_hosts, self.build_ms,
                 self.shaper_reason)

    def namespaces(self, names: Sequence[str]) -> list[str]:
        """Create more namespaces in the lab's holder (nodes' namespaces); return their paths. They go
        with the lab."""
        if self.holder is None:
            raise ApplyError("the lab is not running", operation="namespaces")
        self.holder.create(list(names))
        paths = [self.holder.path(nm) for nm in names]
        for nm, p in zip(names, paths):  # lo up: a node's own addresses answer
            r = rtnl.Rtnl(p, nm)
            try:
                b = rtnl.Batch()
                b.add(rtnl.RTM_NEWLINK, 0, rtnl.link_set_body(1, True), "lo up")
                r.check(b, "lo up")
            finally:
                r.close()
        return paths

    def popen(self, name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` (an argument list, never a shell line) inside namespace ``name`` through nsenter."""
        return subprocess.Popen(["nsenter", f"--net={self.path(name)}", "--", *argv], **kwargs)

    def run(self, name: str, argv: Sequence[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside namespace ``name`` to its end; its output as text."""
        return subprocess.run(["nsenter", f"--net={self.path(name)}", "--", *argv], capture_output=True, text=True,
                              timeout=timeout_s, check=False)

    def kill_inside(self) -> list[int]:
        """Kill every process inside the lab's namespaces (found by namespace, :func:`emulator.clean.find_ours`),
        the holder excepted, and wait for them; return the pids that survived SIGKILL (none expected)."""
        from ..clean import find_ours, kill_and_wait

        if self.holder is None:
            return []
        pids, _ = find_ours(self.run_id)
        return kill_and_wait(pids - {self.holder.pid})

    def close(self) -> None:
        """Stop the shaper, kill what runs inside the lab's namespaces and stop the holder: every namespace of
        the lab goes. Idempotent."""
        if self.shaper is not None:
            try:
                self.shaper.close()
            except Exception as e:  # noqa: BLE001 - the holder must go whatever the shaper says
                log.warning("closing the lab's shaper failed: %s", e)
            self.shaper = None
        for ipr in self._ipr.values():
            try:
                ipr.close()
            except Exception:  # noqa: BLE001
                pass
        self._ipr = {}
        if self.holder is not None:
            left = self.kill_inside()  # a process left inside (a Ray node) would keep its namespace alive
            if left:
                log.warning("lab %s: processes still alive after SIGKILL: %s", self.run_id, left)
            self.holder.close()
            self.holder = None

    # ----------------------------------------------------------------- build
    def _wire(self) -> None:
        assert self.holder is not None
        cfg = self.config
        n, mtu = cfg.n_hosts, cfg.mtu_bytes
        ul = rtnl.Rtnl(self.holder.path(UNDERLAY_NS), UNDERLAY_NS)
        fds = [os.open(self.host_path(h), os.O_RDONLY | os.O_CLOEXEC) for h in range(n)]
        try:
            b = rtnl.Batch()
            b.add(rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, bridge_body(BRIDGE, BRIDGE_IFINDEX, mtu),
                  f"bridge {BRIDGE}")
            for h in range(n):
                b.add(rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL,
                      rtnl.veth_body(f"p{h}", PORT_IFINDEX0 + h, None, UNDERLAY_IFNAME, UNDERLAY_IFINDEX, fds[h]),
                      f"veth p{h} / {self.host_name(h)} {UNDERLAY_IFNAME}")
                b.add(rtnl.RTM_NEWLINK, 0, link_mtu_body(PORT_IFINDEX0 + h, mtu, master=BRIDGE_IFINDEX),
                      f"p{h} mtu {mtu} on {BRIDGE}")
            for idx in [1, BRIDGE_IFINDEX] + [PORT_IFINDEX0 + h for h in range(n)]:
                b.add(rtnl.RTM_NEWLINK, 0, rtnl.link_set_body(idx, True), f"interface {idx} up")
            ul.check(b, "underlay bridge")
        finally:
            ul.close()
            for fd in fds:
                os.close(fd)
        for h in range(n):
            r = rtnl.Rtnl(self.host_path(h), self.host_name(h))
            try:
                b = rtnl.Batch()
                b.add(rtnl.RTM_NEWLINK, 0, link_mtu_body(UNDERLAY_IFINDEX, mtu), f"{UNDERLAY_IFNAME} mtu {mtu}")
                b.add(rtnl.RTM_NEWADDR, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL,
                      rtnl.addr_body(UNDERLAY_IFINDEX, self._addr[h], self.prefix_len),
                      f"address {self.address(h)}/{self.prefix_len}")
                for idx in (1, UNDERLAY_IFINDEX):
                    b.add(rtnl.RTM_NEWLINK, 0, rtnl.link_set_body(idx, True), f"interface {idx} up")
                r.check(b, "underlay interface")
            finally:
                r.close()

    def ipr_of(self, node: str) -> Any:
        """A pyroute2 IPRoute in namespace ``node`` (kept until :meth:`close`), for shapers that want one."""
        ipr = self._ipr.get(node)
        if ipr is None:
            ipr = self._ipr[node] = iproute_in(self.path(node), node)
        return ipr

    def set_delay(self, delay_ms: float) -> None:
        """Change the underlay's one-way delay out of every fake host to ``delay_ms`` (in place, as a link's
        delay changes in a run): what a real network between hosts may do while a run plays.

        Raises
        ------
        ConfigError
            Not a number in (0, 1000] ms.
        ApplyError
            The lab was started without delay (no shaper).
        """
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, (int, float)) or not 0 < delay_ms <= 1000:
            raise ConfigError(f"delay_ms must be a number in (0, 1000] ms, got {delay_ms!r}", key="delay_ms")
        if self.shaper is None:
            raise ApplyError("the lab was started with no underlay delay: nothing shapes it", operation="set_delay")
        self._shape_hosts(float(delay_ms))

    def _shape(self) -> None:
        cfg = self.config
        if cfg.delay_ms == 0:  # nothing to add: no shaper (a 0 ms hold would still cost a daemon round trip)
            self.shaper_reason = "no underlay delay: not shaped"
            return
        self.shaper, self.shaper_reason = make_shaper(cfg.shaper, cfg.seed)
        hosts = [(self.host_name(h), self.host_path(h)) for h in range(cfg.n_hosts)]
        self.shaper.prepare_nodes(hosts, self.ipr_of)
        self._shape_hosts(float(cfg.delay_ms))

    def _shape_hosts(self, delay_ms: float) -> None:
        assert self.shaper is not None
        hosts = [(self.host_name(h), self.host_path(h)) for h in range(self.config.n_hosts)]
        shape = LinkShape(delay_ms=delay_ms, rate_mbps=UNDERLAY_RATE_MBPS)
        # held on the sending host's egress (no peer): what leaves ul0, VXLAN frames included, waits delay_ms
        self.shaper.set([(Port(node, path, UNDERLAY_IFNAME, UNDERLAY_IFINDEX), shape) for node, path in hosts],
                        self.ipr_of)
