"""The userspace backend, for kernels without sch_netem: rate with tbf in the kernel, delay and loss in
the compiled delay daemon (``delayd.c``, driven by :mod:`emulator.shaping.delayd`) that serves every port
of every namespace from a few shard processes (one per core by default, more if the open-file limit asks).

The shards are started on the first ``prepare_node`` with an argument list (no shell) and spoken to over
socketpairs. Per namespace a shard binds an nfnetlink_queue and keeps an nf_tables table whose rules
queue only the held interfaces; no process is forked per namespace or port. Loss is decided per packet
from the run's seed, the link and the packet's identity (:mod:`emulator.shaping.delayd`), so the same
scenario and seed drop the same packets.

Where a port's packets are held: at the receiving end, as they arrive on ``port.peer`` in the peer's
namespace (prerouting), when the port names its peer -- the fast way for TCP, see
:mod:`emulator.shaping.delayd` --; otherwise as they leave ``port`` (postrouting).

An arriving packet is time-stamped by the kernel before prerouting, and sockets that ask for receive
time stamps (``ping`` does, for its RTT) would see it as arrived before its hold, one hop's delay too
early. So on each interface held at ingress a small cls_bpf program at tc ingress clears ``skb->tstamp``
(the socket then stamps the packet when it is read, after the hold) and writes the arrival time into
``skb->mark``: CLOCK_MONOTONIC microseconds truncated to 32 bits (``bpf_ktime_get_ns() / 1000``). The
daemon reads the mark with the packet and releases it at *arrival* + delay, not at the moment it happened
to read it + delay (its wake-up latency, 50-150 us per hop, would otherwise add up along a path). The
daemon's verdict sets the mark back to 0, what the packet had on arrival (crossing a veth into another
namespace scrubs it), so fwmark rules inside a node see what they would without the emulator.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import logging
import os
import platform
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from emulator import rtnl
from emulator.shaping.base import LinkShape, Port, Shaper, tbf_qdisc_body
from emulator.shaping.delayd import DEFAULT_QUEUE_NUM, DEFAULT_RT_PRIORITY, DEFAULT_TABLE, DelayDaemon, link_id
from topologies.errors import ApplyError

log = logging.getLogger(__name__)
#: rtnetlink sockets kept open for tc work, one per namespace, least recently used closed first: the
#: emulator process must stay under its open-file limit with 10,000 namespaces.

# --------------------------------------------------------------------------- rx time-stamp clearing (cls_bpf)

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SCHED_CLS = 3
_SKB_MARK_OFFSET = 8  # offsetof(struct __sk_buff, mark), linux/bpf.h (stable UAPI)
_SKB_TSTAMP_OFFSET = 152  # offsetof(struct __sk_buff, tstamp)
_BPF_FUNC_KTIME_GET_NS = 5  # CLOCK_MONOTONIC, ns


def _insn(code: int, dst: int, src: int, off: int, imm: int) -> bytes:
    """One struct bpf_insn: opcode, dst_reg | src_reg << 4, s16 offset, s32 immediate."""
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


# r6 = r1 (ctx); r0 = bpf_ktime_get_ns(); r0 /= 1000; *(u32 *)(r6 + mark) = r0;
# r0 = 0; *(u64 *)(r6 + tstamp) = r0; exit (r0 = 0: TC_ACT_OK)
_RXTS_INSNS = (_insn(0xBF, 6, 1, 0, 0)
               + _insn(0x85, 0, 0, 0, _BPF_FUNC_KTIME_GET_NS)
               + _insn(0x37, 0, 0, 0, 1000)
               + _insn(0x63, 6, 0, _SKB_MARK_OFFSET, 0)
               + _insn(0xB7, 0, 0, 0, 0)
               + _insn(0x7B, 6, 0, _SKB_TSTAMP_OFFSET, 0)
               + _insn(0x95, 0, 0, 0, 0))
INGRESS_HANDLE = 0xFFFF0000  # the ingress qdisc "ffff:"
#: Index of the filter block the ingress qdiscs of a namespace share (block indexes are per namespace).
#: One shared block, one filter per namespace: every filter block bound costs a search of a kernel-wide
#: list of them (``flow_indr_dev_setup_offload``), which made one block per interface quadratic in size.
RXTS_BLOCK = 0x5A7E
_FILTER_NAME = "satnetem_rxts"


def load_clear_tstamp_prog() -> int:
    """Load the tc program that stamps the arrival time (us) into ``skb->mark`` and zeroes
    ``skb->tstamp``; returns its fd (the caller closes it).

    Raises
    ------
    OSError
        bpf(2) is missing or refused the program.
    """
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf(2) syscall number unknown on {platform.machine()}")
    insns = ctypes.create_string_buffer(_RXTS_INSNS, len(_RXTS_INSNS))
    lic = ctypes.create_string_buffer(b"GPL")
    # union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf,
    # kern_version, prog_flags, prog_name[16]; the rest zero.
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=IIQQIIQII16s", attr, 0, _BPF_PROG_TYPE_SCHED_CLS, len(_RXTS_INSNS) // 8,
                     ctypes.addressof(insns), ctypes.addressof(lic), 0, 0, 0, 0, 0, b"satnetem_rxts")
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(_BPF_PROG_LOAD), attr, ctypes.c_uint(len(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(BPF_PROG_LOAD): {os.strerror(err)}")
    return int(fd)


class _FastPorts:
    """The shaped ports, numbered, with what :meth:`UserspaceShaper.set_delays` needs as arrays: where the
    daemon holds each one's packets (shard, namespace id, ifindex, ingress), its link id, its rate and queue
    (which only :meth:`UserspaceShaper.set` changes), and its delay and loss now. ``valid`` is False for a
    port forgotten or released since :meth:`UserspaceShaper.set` last shaped it."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, int], int] = {}  # port key -> number
        self.keys: list[tuple[str, int]] = []
        self._cap = 0
        self.valid = np.zeros(0, bool)
        self.shard = np.zeros(0, np.int64)
        self.nsid = np.zeros(0, np.int64)
        self.ifindex = np.zeros(0, np.int64)
        self.ingress = np.zeros(0, np.int64)
        self.lid = np.zeros(0, np.uint64)
        self.rate = np.zeros(0, np.float64)
        self.queue = np.zeros(0, np.int64)  # -1: the default queue
        self.delay = np.zeros(0, np.float64)
        self.loss = np.zeros(0, np.float64)

    def number(self, key: tuple[str, int]) -> int:
        i = self.ids.get(key)
        if i is None:
            i = self.ids[key] = len(self.keys)
            self.keys.append(key)
            if i >= self._cap:
                self._cap = max(1024, 2 * self._cap)
                for name in ("valid", "shard", "nsid", "ifindex", "ingress", "lid", "rate", "queue", "delay", "loss"):
                    old = getattr(self, name)
                    new = np.zeros(self._cap, old.dtype)
                    new[:len(old)] = old
                    setattr(self, name, new)
        return i


class UserspaceShaper(Shaper):
    """tbf rate in the kernel + the compiled delay daemon for delay and loss.

    Parameters
    ----------
    seed : int
        Seed of the daemon's loss decisions.
    queue_num : int
        nfnetlink_queue number used in every namespace (queues are per namespace).
    reply_timeout_s : float
        How long to wait for the daemon to answer one request, s.
    shards : int or None
        Daemon processes (None: one per CPU core, more when the open-file limit requires).
    rt_priority : int
        1-99: the daemon runs at SCHED_FIFO with that priority (default, see
        :data:`emulator.shaping.delayd.DEFAULT_RT_PRIORITY`); 0: at niceness -10.
    fd_limit : int or None
        Open-file limit of each daemon process (None: this process's hard limit); it decides how many
        namespaces one shard may serve.
    carry : bool
        A late release's lateness is made up at the packet's next hold (:class:`DelayDaemon`); False: off.
    keep_cpus_awake : bool
        The daemon holds the kernel's CPU latency request at 0 us while it runs (:class:`DelayDaemon`).
    watch : bool or None
        Standby threads in the daemon's shards (:class:`DelayDaemon`); None: from some thousands of
        namespaces on.
    """

    name = "userspace"

    def __init__(self, seed: int = 0, queue_num: int = DEFAULT_QUEUE_NUM, table: str = DEFAULT_TABLE,
                 reply_timeout_s: float = 30.0, shards: int | None = None,
                 rt_priority: int = DEFAULT_RT_PRIORITY, fd_limit: int | None = None, carry: bool = True,
                 keep_cpus_awake: bool = True, watch: bool | None = None) -> None:
        self.seed = seed
        self.queue_num = queue_num
        self.table = table
        self._daemon = DelayDaemon(seed, queue_num, table, shards=shards, rt_priority=rt_priority,
                                   reply_timeout_s=reply_timeout_s, fd_limit=fd_limit, carry=carry,
                                   keep_cpus_awake=keep_cpus_awake, watch=watch)
        self._ns_of_node: dict[str, str] = {}
        # port key -> (shape, where its packets are held: (ns_path, ifindex, ingress))
        self._shaped: dict[tuple[str, int], tuple[LinkShape, tuple[str, int, bool]]] = {}
        # the same ports as arrays; their delay and loss there are the current ones (set_delays changes them
        # there only)
        self._fast = _FastPorts()
        self._closed = False
        self._rxts_prog_fd: int | None = None
        self._rxts_failed = False  # warned once that receive time stamps will be early
        self._rxts_done: set[tuple[str, int]] = set()  # (ns_path, ifindex) carrying the program
        self._rt = rtnl.PrivateSockets()  # ns_path -> raw rtnetlink socket (tc batches)
        atexit.register(self.close)

    # ----------------------------------------------------------------- daemon

    @property
    def pids(self) -> list[int]:
        """Process ids of the delay daemon's running shards."""
        return self._daemon.pids

    @property
    def pid(self) -> int | None:
        """Process id of the first running shard of the delay daemon, or None."""
        pids = self.pids
        return pids[0] if pids else None

    def _live(self, op: str) -> DelayDaemon:
        if self._closed:
            raise ApplyError("userspace shaper is closed", operation=op)
        return self._daemon

    def _rtnl(self, path: str, node: str) -> rtnl.Rtnl:
        return self._rt.get(path, node)

    def stats(self, reset_late_max: bool = False) -> dict[str, Any]:
        """Counters of the daemon since it started, summed over its shards ({} before it started).

        Keys: queued, verdicts, dropped (of which overflow: the shard's packet pool was full), unshaped
        (packets, cumulative), held (packets held now), verdict_errors, released, late_sum_us,
        late_mean_us, late_max_us (how late packets were released after their due time, us, measured when
        their verdicts were sent), late_p50_us and late_p99_us (quantiles of that lateness in 5 us bins,
        negative when released early; None beyond 10 ms), busy_max_us and busy_cpu_us (longest single
        pass of a shard's loop, wall clock, and the CPU time of that pass, us: the difference is time the
        shard was preempted), lead_us (how early the timer is armed), stamped, read_lag_mean_us,
        namespaces, held_interfaces, shards, cpu_s_per_shard (CPU seconds each shard used), rt_priority
        (0: not real-time), backend, ops (per kind of control request: count, ms in all, longest ms),
        standby_threads, standby_passes and standby_released (the standby threads, their passes that
        did work, the packets they released). ``reset_late_max`` zeroes the maxima and the lateness histogram (so
        the quantiles) after reporting them, to measure one interval.
        """
        return self._live("stats").stats(reset_late_max)

    def route_epoch(self, mark: int, at_ns: int = 0) -> None:
        """From ``at_ns`` (``time.monotonic_ns()``; 0: at once) every packet the daemon passes on leaves with
        ``skb->mark = mark``, for fwmark rules to switch route tables at that instant in every namespace it
        serves (:meth:`DelayDaemon.route_epoch`); ``mark`` 0 ends it."""
        self._live("route epoch").route_epoch(mark, at_ns)

    # ----------------------------------------------------------------- Shaper

    def prepare_node(self, node: str, ns_path: str, ipr: Any) -> None:
        self.prepare_nodes([(node, ns_path)])

    def prepare_nodes(self, nodes: Sequence[tuple[str, str]], ipr_of: Callable[[str], Any] | None = None,
                      all_ports_held: bool = False) -> None:
        """Prepare many namespaces, ``[(node, ns_path), ...]``, with one request to the daemon.

        ``all_ports_held``: every interface of these namespaces but ``lo`` will be the ``peer`` of a shaped
        port (the emulator's case). The daemon then queues every arrival with one fixed rule per namespace
        and no rule changes when a port comes, goes or moves (an unheld arrival is passed on at once).
        """
        todo = [(node, path) for node, path in nodes if self._ns_of_node.get(node) != path]
        if not todo:
            return
        try:
            self._live("prepare").attach([path for _node, path in todo], ingress_all=all_ports_held)
        except ApplyError as e:
            raise ApplyError(str(e), node=todo[0][0] if len(todo) == 1 else None,
                             operation="attach namespaces to delay daemon") from None
        for node, path in todo:
            self._ns_of_node[node] = path

    @staticmethod
    def hold_of(port: Port) -> tuple[str, int, bool]:
        """Where the daemon holds ``port``'s packets: (namespace path, ifindex, ingress)."""
        if port.peer is not None:
            return (port.peer.ns_path, port.peer.ifindex, True)
        return (port.ns_path, port.ifindex, False)

    def _check_prepared(self, port: Port, what: Port) -> None:
        if self._ns_of_node.get(what.node) != what.ns_path:
            raise ApplyError(f"namespace {what.ns_path} of {what.node} was not prepared (prepare_node first)",
                             node=port.node, link=port.ifname, operation="shape")

    def set(self, items: Sequence[tuple[Port, LinkShape]], ipr_of: Callable[[str], Any]) -> None:
        """Shape many ports: tc work (tbf, and the ingress program where packets are held at arrival) in
        one rtnetlink batch per namespace, then one request to the daemon for every delay and loss."""
        changed: list[tuple[Port, LinkShape, tuple[str, int, bool]]] = []
        moved: list[tuple[str, int, bool]] = []
        batches: dict[str, rtnl.Batch] = {}
        nodes: dict[str, str] = {}
        rxts: list[Port] = []
        for port, shape in items:
            self._check_prepared(port, port)
            if port.peer is not None:
                self._check_prepared(port, port.peer)
            hold = self.hold_of(port)
            old = self._shaped.get(port.key)
            if old is not None:
                fid = self._fast.ids.get(port.key)
                if fid is not None and self._fast.valid[fid]:  # delay and loss as set_delays left them
                    if (old[1] == hold and old[0].rate_mbps == shape.rate_mbps
                            and old[0].queue_packets == shape.queue_packets
                            and self._fast.delay[fid] == shape.delay_ms and self._fast.loss[fid] == shape.loss_pct):
                        continue
                elif old == (shape, hold):
                    continue
            old_shape = old[0] if old is not None else None
            if (old_shape is None or old_shape.rate_mbps != shape.rate_mbps
                    or old_shape.queue_packets != shape.queue_packets):
                b = batches.setdefault(port.ns_path, rtnl.Batch())
                nodes[port.ns_path] = port.node
                # created the first time, changed in place afterwards (queued packets stay)
                b.add(rtnl.RTM_NEWQDISC, rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE, tbf_qdisc_body(port.ifindex, shape),
                      f"tbf {shape.rate_mbps} Mbit/s on {port.ifname}")
            if old is not None and old[1] != hold:  # the peer moved (handover) or appeared
                moved.append(old[1])
            changed.append((port, shape, hold))
            if hold[2] and (hold[0], hold[1]) not in self._rxts_done and port.peer is not None:
                rxts.append(port.peer)
        if rxts and not self._rxts_failed:
            self._queue_rx_stamps(rxts, batches, nodes)
        for path, b in batches.items():
            failures = self._rtnl(path, nodes[path]).run(b)
            rx_fail = [(r, e) for r, e in failures if str(r.what).startswith("ingress")]
            shaping_fail = [(r, e) for r, e in failures if not str(r.what).startswith("ingress")]
            if shaping_fail:
                r, e = shaping_fail[0]
                raise ApplyError(f"{r.what}: {os.strerror(e)}", node=nodes[path], operation="tc tbf")
            if rx_fail:
                self._rx_stamp_failed(nodes[path], rx_fail[0][0].what, os.strerror(rx_fail[0][1]))
        if changed:
            lids = [link_id(p.node, p.ifname) for p, _s, _h in changed]
            self._live("shape").set_ports([(ns, idx, s.delay_ms, s.loss_pct, ingress, lid, p.egress_group)
                                           for (p, s, (ns, idx, ingress)), lid in zip(changed, lids)], forget=moved)
            f = self._fast
            for (port, shape, (path, ifindex, ingress)), lid in zip(changed, lids):
                self._shaped[port.key] = (shape, (path, ifindex, ingress))
                where = self._daemon.where(path)
                i = f.number(port.key)
                f.valid[i] = where is not None
                f.shard[i], f.nsid[i] = where if where is not None else (-1, -1)
                f.ifindex[i], f.ingress[i], f.lid[i] = ifindex, int(ingress), lid
                f.rate[i], f.delay[i], f.loss[i] = shape.rate_mbps, shape.delay_ms, shape.loss_pct
                f.queue[i] = -1 if shape.queue_packets is None else shape.queue_packets

    def fast_id(self, port: Port) -> int:
        """The number :meth:`set_delays` knows ``port`` by, or -1 if it is not shaped now (never, or
        forgotten since). Valid while the port's far end and its namespaces stay where they are."""
        fid = self._fast.ids.get(port.key)
        shaped = self._shaped.get(port.key)
        if fid is None or not self._fast.valid[fid] or shaped is None or shaped[1] != self.hold_of(port):
            return -1
        return fid

    def set_delays(self, ids: np.ndarray, delay_ms: np.ndarray, loss_pct: np.ndarray, rate_mbps: np.ndarray,
                   queue_packets: np.ndarray) -> np.ndarray:
        """Shape the ports numbered ``ids`` (:meth:`fast_id`) whose rate and queue (-1: the default) are as
        given and were shaped so already: their delay and loss change, as :meth:`set` would change them,
        without Python per port. Returns which ones this did (a bool per element); the others (forgotten,
        released, or with a new rate or queue) are the caller's to :meth:`set`.
        """
        ids = np.asarray(ids, np.int64)
        if not (np.isfinite(delay_ms).all() and np.isfinite(loss_pct).all()):
            raise ApplyError("delays and losses must be finite numbers", operation="shape")
        f = self._fast
        ok = f.valid[ids] & (f.rate[ids] == rate_mbps) & (f.queue[ids] == queue_packets)
        todo = ok & ((f.delay[ids] != delay_ms) | (f.loss[ids] != loss_pct))
        if todo.any():
            t = ids[todo]
            self._live("shape").set_delays(f.shard[t], f.nsid[t], f.ifindex[t], f.ingress[t],
                                           np.round(delay_ms[todo] * 1e6).astype(np.int64), loss_pct[todo], f.lid[t])
            f.delay[t], f.loss[t] = delay_ms[todo], loss_pct[todo]
        return ok

    def _queue_rx_stamps(self, peers: list[Port], batches: dict[str, rtnl.Batch],
                         nodes: dict[str, str]) -> None:
        """Queue the ingress qdisc and the stamping program on each of ``peers`` (see module docstring)."""
        try:
            if self._rxts_prog_fd is None:
                self._rxts_prog_fd = load_clear_tstamp_prog()
        except OSError as e:
            self._rx_stamp_failed(peers[0].node, "loading the program", str(e))
            return
        with_qdisc: set[str] = set()
        for peer in peers:
            key = (peer.ns_path, peer.ifindex)
            if key in self._rxts_done:
                continue
            b = batches.setdefault(peer.ns_path, rtnl.Batch())
            nodes.setdefault(peer.ns_path, peer.node)
            b.add(rtnl.RTM_NEWQDISC, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL,
                  rtnl.ingress_qdisc_body(peer.ifindex, RXTS_BLOCK),
                  f"ingress qdisc on {peer.ifname}", ignore=(errno.EEXIST,))
            with_qdisc.add(peer.ns_path)
            self._rxts_done.add(key)
        # One filter per namespace, on the block its ingress qdiscs share (a block, and its filter, goes
        # when the last qdisc bound to it does, so it is added again whenever qdiscs are; EEXIST: still there)
        for path in with_qdisc:
            batches[path].add(rtnl.RTM_NEWTFILTER, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL,
                              rtnl.bpf_filter_body(rtnl.TCM_IFINDEX_MAGIC_BLOCK, RXTS_BLOCK, 1, 1,
                                                   self._rxts_prog_fd, _FILTER_NAME),
                              f"ingress bpf filter on block {RXTS_BLOCK}", ignore=(errno.EEXIST,))

    def _rx_stamp_failed(self, node: str, what: str, why: str) -> None:
        if not self._rxts_failed:
            # Shaping itself is right; receive time stamps (ping's RTT) come out early by the last hop's
            # delay, and delays count from when the daemon reads a packet (a little longer than asked).
            log.warning("cannot stamp arrivals on %s (%s: %s): programs reading receive time stamps (ping) "
                        "will see RTTs short by the delay of the last hop", node, what, why)
        self._rxts_failed = True

    def forget(self, port: Port) -> None:
        """Stop holding ``port``'s packets wherever they were held (its ``peer`` now need not be given).
        Its interface is leaving its namespace: the arrival stamping there goes with it (a move drops
        the interface's qdiscs), so it is added again if the interface ever comes back."""
        self._rxts_done.discard(port.key)
        fid = self._fast.ids.get(port.key)
        if fid is not None:
            self._fast.valid[fid] = False
        old = self._shaped.pop(port.key, None)
        if old is not None and not self._closed:
            self._daemon.set_ports([], [old[1]])

    def release_node(self, node: str, ns_path: str) -> None:
        """Unbind the namespace's queue and remove its table (before the namespace is torn down).

        Ports of other namespaces whose packets were held here are forgotten too (the next ``set`` on
        them adds again).
        """
        if self._ns_of_node.pop(node, None) is None:
            return
        self._rxts_done = {k for k in self._rxts_done if k[0] != ns_path}
        self._rt.drop(ns_path)
        elsewhere = []  # holds in other namespaces of this namespace's ports
        for key, (_shape, hold) in list(self._shaped.items()):
            if key[0] == ns_path or hold[0] == ns_path:
                del self._shaped[key]
                fid = self._fast.ids.get(key)
                if fid is not None:
                    self._fast.valid[fid] = False
                if hold[0] != ns_path:
                    elsewhere.append(hold)
        if not self._closed:
            if elsewhere:
                self._daemon.set_ports([], elsewhere)
            self._daemon.release(ns_path)

    def close(self) -> None:
        """Ask the daemon to remove its rules and exit (killed if it does not within 5 s). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._ns_of_node.clear()
        self._shaped.clear()
        self._fast.valid[:] = False
        self._rxts_done.clear()
        self._rt.close()
        if self._rxts_prog_fd is not None:  # the filters keep their own reference to the program
            os.close(self._rxts_prog_fd)
            self._rxts_prog_fd = None
        self._daemon.close()
        atexit.unregister(self.close)
