"""The userspace backend, for kernels without sch_netem: rate with htb in the kernel, delay and loss in
one delay daemon (:mod:`emulator.shaping.delayd`) that serves every port of every namespace.

The daemon is started on the first ``prepare_node`` with an argument list (no shell) and spoken to over
its stdin/stdout with one JSON line per request. Per namespace it binds an nfnetlink_queue and installs
one nf_tables rule over netlink; no process is forked per namespace or per port.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
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
        self._shaped: dict[tuple[str, int], LinkShape] = {}
        self._closed = False

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
            ready, _, _ = select.select([proc.stdout], [], [], self.reply_timeout_s)
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

    def stats(self) -> dict[str, Any]:
        """Counters of the daemon: queued, verdicts, dropped, unshaped, held, late_mean_us, late_max_us."""
        reply = self._call("stats")
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

    def set(self, items: Sequence[tuple[Port, LinkShape]], ipr_of: Callable[[str], Any]) -> None:
        changed: list[tuple[Port, LinkShape]] = []
        for port, shape in items:
            if self._ns_of_node.get(port.node) != port.ns_path:
                raise ApplyError(f"namespace {port.ns_path} was not prepared (prepare_node first)",
                                 node=port.node, link=port.ifname, operation="shape")
            old = self._shaped.get(port.key)
            if old == shape:
                continue
            if old is None or old.rate_mbps != shape.rate_mbps:
                try:
                    apply_htb(ipr_of(port.node), port.ifindex, shape, first=old is None)
                except (NetlinkError, OSError) as e:
                    raise ApplyError(f"htb {'add' if old is None else 'change'} failed: {e}", node=port.node,
                                     link=port.ifname, operation="tc htb") from e
            changed.append((port, shape))
        if changed:
            self._call("set", ports=[[p.ns_path, p.ifindex, s.delay_ms, s.loss_pct] for p, s in changed])
            for port, shape in changed:
                self._shaped[port.key] = shape

    def forget(self, port: Port) -> None:
        if self._shaped.pop(port.key, None) is not None and self.pid is not None:
            self._call("forget", ns=port.ns_path, ifindex=port.ifindex)

    def release_node(self, node: str, ns_path: str) -> None:
        """Unbind the namespace's queue and remove its rule (before the namespace is torn down)."""
        if self._ns_of_node.pop(node, None) is None:
            return
        for key in [k for k in self._shaped if k[0] == ns_path]:
            del self._shaped[key]
        if self.pid is not None:
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
