"""The userspace backend, for kernels without sch_netem: rate with htb in the kernel, delay and loss in
one delay daemon (:mod:`emulator.shaping.delayd`) that serves every port of every namespace.

The daemon is started on the first ``prepare_node`` with an argument list (no shell) and spoken to over
its stdin/stdout with one JSON line per request. Per namespace it binds an nfnetlink_queue and keeps an
nf_tables table whose rules queue only the held interfaces; no process is forked per namespace or port.

Where a port's packets are held: at the receiving end, as they arrive on ``port.peer`` in the peer's
namespace (prerouting), when the port names its peer -- the fast way for TCP, see
:mod:`emulator.shaping.delayd` --; otherwise as they leave ``port`` (postrouting).

An arriving packet is time-stamped by the kernel before prerouting, and sockets that ask for receive
time stamps (``ping`` does, for its RTT) would see it as arrived before its hold, one hop's delay too
early. So on each interface held at ingress a three-instruction cls_bpf program clears ``skb->tstamp``
at tc ingress; the socket then stamps the packet when it is read, after the hold.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import json
import logging
import os
import platform
import select
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from emulator.shaping.base import LinkShape, Port, Shaper, apply_htb
from emulator.shaping.delayd import DEFAULT_QUEUE_NUM, DEFAULT_TABLE
from topologies.errors import ApplyError

log = logging.getLogger(__name__)
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])

# --------------------------------------------------------------------------- rx time-stamp clearing (cls_bpf)

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SCHED_CLS = 3
_SKB_TSTAMP_OFFSET = 152  # offsetof(struct __sk_buff, tstamp), linux/bpf.h (stable UAPI)
# r0 = 0 (TC_ACT_OK); *(u64 *)(r1 + tstamp) = r0; exit   -- struct bpf_insn: code, dst|src<<4, off, imm
_CLEAR_TSTAMP_INSNS = (struct.pack("<BBhi", 0xB7, 0x00, 0, 0)
                       + struct.pack("<BBhi", 0x7B, 0x01, _SKB_TSTAMP_OFFSET, 0)
                       + struct.pack("<BBhi", 0x95, 0x00, 0, 0))
INGRESS_HANDLE = 0xFFFF0000  # the ingress qdisc "ffff:"
_FILTER_NAME = "satnetem_rxts"


def load_clear_tstamp_prog() -> int:
    """Load the tc program that zeroes ``skb->tstamp``; returns its fd (the caller closes it).

    Raises
    ------
    OSError
        bpf(2) is missing or refused the program.
    """
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf(2) syscall number unknown on {platform.machine()}")
    insns = ctypes.create_string_buffer(_CLEAR_TSTAMP_INSNS, len(_CLEAR_TSTAMP_INSNS))
    lic = ctypes.create_string_buffer(b"GPL")
    # union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf,
    # kern_version, prog_flags, prog_name[16]; the rest zero.
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=IIQQIIQII16s", attr, 0, _BPF_PROG_TYPE_SCHED_CLS, len(_CLEAR_TSTAMP_INSNS) // 8,
                     ctypes.addressof(insns), ctypes.addressof(lic), 0, 0, 0, 0, 0, b"satnetem_rxts")
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(_BPF_PROG_LOAD), attr, ctypes.c_uint(len(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(BPF_PROG_LOAD): {os.strerror(err)}")
    return int(fd)


def attach_clear_tstamp(ipr: Any, ifindex: int, prog_fd: int) -> None:
    """Put the program on ``ifindex``'s tc ingress (ingress qdisc ffff: + one direct-action bpf filter).

    Idempotent: an ingress qdisc or our filter already there is kept.
    """
    for call in (lambda: ipr.tc("add", "ingress", ifindex, INGRESS_HANDLE),
                 lambda: ipr.tc("add-filter", "bpf", ifindex, 1, parent=INGRESS_HANDLE, prio=1,
                                fd=prog_fd, name=_FILTER_NAME, direct_action=True)):
        try:
            call()
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise


class UserspaceShaper(Shaper):
    """htb rate in the kernel + the delay daemon for delay and loss.

    Parameters
    ----------
    seed : int
        Seed of the daemon's loss RNG.
    queue_num : int
        nfnetlink_queue number used in every namespace (queues are per namespace).
    reply_timeout_s : float
        How long to wait for the daemon to answer one request, s.
    """

    name = "userspace"

    def __init__(self, seed: int = 0, queue_num: int = DEFAULT_QUEUE_NUM, table: str = DEFAULT_TABLE,
                 reply_timeout_s: float = 30.0) -> None:
        self.seed = seed
        self.queue_num = queue_num
        self.table = table
        self.reply_timeout_s = reply_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._next_id = 0
        self._ns_of_node: dict[str, str] = {}
        # port key -> (shape, where its packets are held: (ns_path, ifindex, ingress))
        self._shaped: dict[tuple[str, int], tuple[LinkShape, tuple[str, int, bool]]] = {}
        self._closed = False
        self._rxts_prog_fd: int | None = None
        self._rxts_failed = False  # warned once that receive time stamps will be early
        self._rxts_done: set[tuple[str, int]] = set()  # (ns_path, ifindex) carrying the program

    # ----------------------------------------------------------------- daemon

    @property
    def pid(self) -> int | None:
        """Process id of the delay daemon, or None if not running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "emulator.shaping.delayd", "--queue-num", str(self.queue_num),
                "--table", self.table, "--seed", str(self.seed)]
        log.info("starting delay daemon: %s", argv)
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                      close_fds=True)
        atexit.register(self.close)

    def _call(self, op: str, **args: Any) -> dict[str, Any]:
        with self._lock:
            if self._closed:
                raise ApplyError("userspace shaper is closed", operation=op)
            if self._proc is None:
                self._start()
            proc = self._proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            self._next_id += 1
            rid = self._next_id
            try:
                proc.stdin.write(json.dumps({"id": rid, "op": op, **args}).encode() + b"\n")
                proc.stdin.flush()
            except BrokenPipeError:
                raise ApplyError(f"delay daemon died (exit {proc.poll()})", operation=op) from None
            # poll, not select: with thousands of namespaces open, descriptors exceed FD_SETSIZE
            poller = select.poll()
            poller.register(proc.stdout, select.POLLIN)
            ready = poller.poll(self.reply_timeout_s * 1000)
            if not ready:
                raise ApplyError(f"delay daemon did not answer in {self.reply_timeout_s} s", operation=op)
            line = proc.stdout.readline()
            if not line:
                raise ApplyError(f"delay daemon died (exit {proc.wait()})", operation=op)
            reply = json.loads(line)
            if reply.get("id") != rid:
                raise ApplyError(f"delay daemon answered request {reply.get('id')}, expected {rid}",
                                 operation=op)
            if not reply.get("ok"):
                raise ApplyError(f"delay daemon: {reply.get('error')}", operation=op)
            return reply

    def stats(self, reset_late_max: bool = False) -> dict[str, Any]:
        """Counters of the daemon since it started.

        Keys: queued, verdicts, dropped, unshaped (packets, cumulative), held (packets held now),
        verdict_errors, released, late_sum_us, late_mean_us, late_max_us (how late packets were released
        after their due time, us), busy_max_us and busy_cpu_us (longest single pass of the daemon's loop,
        wall clock, and the CPU time of that pass, us: the difference is time the daemon was preempted),
        lead_us (how early the timer is armed), namespaces,
        held_interfaces. ``reset_late_max`` zeroes both maxima after reporting them (to measure one
        interval).
        """
        reply = self._call("stats", reset_late_max=reset_late_max)
        return {k: v for k, v in reply.items() if k not in ("id", "ok")}

    # ----------------------------------------------------------------- Shaper

    def prepare_node(self, node: str, ns_path: str, ipr: Any) -> None:
        if self._ns_of_node.get(node) == ns_path:
            return
        try:
            self._call("ns", ns=ns_path)
        except ApplyError as e:
            raise ApplyError(str(e), node=node, operation="attach namespace to delay daemon") from None
        self._ns_of_node[node] = ns_path

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
        changed: list[tuple[Port, LinkShape, tuple[str, int, bool]]] = []
        moved: list[tuple[str, int, bool]] = []
        for port, shape in items:
            self._check_prepared(port, port)
            if port.peer is not None:
                self._check_prepared(port, port.peer)
            hold = self.hold_of(port)
            old = self._shaped.get(port.key)
            if old == (shape, hold):
                continue
            old_shape = old[0] if old is not None else None
            if old_shape is None or old_shape.rate_mbps != shape.rate_mbps:
                try:
                    apply_htb(ipr_of(port.node), port.ifindex, shape, first=old_shape is None)
                except (NetlinkError, OSError) as e:
                    raise ApplyError(f"htb {'add' if old is None else 'change'} failed: {e}", node=port.node,
                                     link=port.ifname, operation="tc htb") from e
            if old is not None and old[1] != hold:  # the peer moved (handover) or appeared
                moved.append(old[1])
            changed.append((port, shape, hold))
        for port, _shape, (ns, idx, ingress) in changed:
            if ingress and (ns, idx) not in self._rxts_done and port.peer is not None:
                self._clear_rx_tstamps(ipr_of, port.peer)
        if changed:
            self._call("set", ports=[[ns, idx, s.delay_ms, s.loss_pct, ingress]
                                     for _p, s, (ns, idx, ingress) in changed],
                       forget=[list(h) for h in moved])
            for port, shape, hold in changed:
                self._shaped[port.key] = (shape, hold)

    def _clear_rx_tstamps(self, ipr_of: Callable[[str], Any], peer: Port) -> None:
        if self._rxts_failed:
            return
        try:
            if self._rxts_prog_fd is None:
                self._rxts_prog_fd = load_clear_tstamp_prog()
            attach_clear_tstamp(ipr_of(peer.node), peer.ifindex, self._rxts_prog_fd)
        except (OSError, NetlinkError) as e:
            # Shaping itself is right; only receive time stamps (ping's RTT) come out early.
            self._rxts_failed = True
            log.warning("cannot clear receive time stamps on %s/%s (%s): programs reading them (ping) "
                        "will see RTTs short by the delay of the last hop", peer.node, peer.ifname, e)
            return
        self._rxts_done.add((peer.ns_path, peer.ifindex))

    def forget(self, port: Port) -> None:
        """Stop holding ``port``'s packets wherever they were held (its ``peer`` now need not be given)."""
        old = self._shaped.pop(port.key, None)
        if old is not None and self.pid is not None:
            ns, ifindex, ingress = old[1]
            self._call("forget", ns=ns, ifindex=ifindex, ingress=ingress)

    def release_node(self, node: str, ns_path: str) -> None:
        """Unbind the namespace's queue and remove its table (before the namespace is torn down).

        Ports of other namespaces whose packets were held here are forgotten too (the next ``set`` on
        them adds again).
        """
        if self._ns_of_node.pop(node, None) is None:
            return
        self._rxts_done = {k for k in self._rxts_done if k[0] != ns_path}
        elsewhere = []  # holds in other namespaces of this namespace's ports
        for key, (_shape, hold) in list(self._shaped.items()):
            if key[0] == ns_path or hold[0] == ns_path:
                del self._shaped[key]
                if hold[0] != ns_path:
                    elsewhere.append(list(hold))
        if self.pid is not None:
            if elsewhere:
                self._call("set", ports=[], forget=elsewhere)
            self._call("release_ns", ns=ns_path)

    def close(self) -> None:
        """Ask the daemon to remove its rules and exit; kill it if it does not within 5 s. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            proc, self._proc = self._proc, None
        self._ns_of_node.clear()
        self._shaped.clear()
        self._rxts_done.clear()
        if self._rxts_prog_fd is not None:  # the filters keep their own reference to the program
            os.close(self._rxts_prog_fd)
            self._rxts_prog_fd = None
        if proc is None:
            return
        try:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write(b'{"id": 0, "op": "close"}\n')
                proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("delay daemon %d did not exit; killing it", proc.pid)
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        atexit.unregister(self.close)
