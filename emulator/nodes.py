"""Mininet nodes started in bulk, and a Mininet object that Mininet's CLI can drive.

Stock Mininet starts one shell per node and waits for its prompt before starting the next, about
30 ms each. :func:`start_nodes` spawns every shell first and then collects the prompts, so bring-up
costs one round of process creation. Every shell carries the argument ``satnetem:<run_id>:<name>``
so that :mod:`emulator.clean` can find it (stock Mininet marks its shells ``mininet:<name>``, and
``mn -c`` kills those; ours are left to ``satnetem clean``).
"""

from __future__ import annotations

import logging
import os
import pty
import select
import time
from collections.abc import Iterable
from typing import Any

from mininet.link import Intf
from mininet.net import Mininet
from mininet.node import Node

from topologies.errors import ApplyError

log = logging.getLogger(__name__)

MARK = "satnetem"


def mark(run_id: str, name: str) -> str:
    """The process argument that marks node ``name``'s shell of run ``run_id``."""
    return f"{MARK}:{run_id}:{name}"


class EmuNode(Node):
    """A Mininet ``Node`` in its own network namespace whose shell is spawned without waiting.

    Call :meth:`wait_ready` (or use :func:`start_nodes`) before using ``cmd``.
    """

    def __init__(self, name: str, run_id: str, kind: str, **params) -> None:
        self.run_id = run_id
        self.kind = kind
        super().__init__(name, inNamespace=True, **params)

    def startShell(self, mnopts=None) -> None:
        # As Node.startShell, minus the wait for the prompt and with our process mark.
        # mnexec -c would close every descriptor up to the (raised) open-file limit, one syscall each;
        # Popen(close_fds=True) does the same with one close_range.
        cmd = ["mnexec", "-dn", "env", "PS1=" + chr(127), "bash", "--norc", "--noediting", "-is",
               mark(self.run_id, self.name)]
        self.master, self.slave = pty.openpty()
        self.shell = self._popen(cmd, stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                 close_fds=True)
        self.stdin = os.fdopen(self.master, "r")
        self.stdout = self.stdin
        self.pid = self.shell.pid
        self.pollOut = select.poll()
        self.pollOut.register(self.stdout)
        self.outToNode[self.stdout.fileno()] = self
        self.inToNode[self.stdin.fileno()] = self
        self.execed = False
        self.lastCmd = None
        self.lastPid = None
        self.readbuf = ""
        self.waiting = True

    def wait_ready(self, deadline: float) -> None:
        """Wait for the first prompt (until ``deadline``, a time.monotonic() value)."""
        data = ""
        while not data.endswith(chr(127)):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self.pollOut.poll(left_ms):
                raise ApplyError("shell did not start in time", node=self.name, operation="start")
            data += self.read(1024)
        self.waiting = False

    @property
    def ns_path(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def popen(self, *args, **kwargs):
        """As Mininet's ``Node.popen``, but joining only the node's *network* namespace.

        ``mnexec -a`` also joins the shell's mount namespace, which resets the root directory: run from
        a chroot (the netem test VM runs the host's tree that way) the program then cannot find its
        files. ``setsid`` detaches it from our terminal as ``mnexec -d`` does.
        """
        kwargs.setdefault("mncmd", ["setsid", "nsenter", f"--net={self.ns_path}", "--"])
        return super().popen(*args, **kwargs)

    def add_intf(self, name: str, port: int, ip: str | None, prefix_len: int | None) -> Intf:
        """Record an interface that already exists in this namespace (no commands run)."""
        intf = Intf.__new__(Intf)
        intf.node, intf.name, intf.link, intf.mac = self, name, None, None
        intf.ip, intf.prefixLen, intf.params = ip, prefix_len, {}
        self.intfs[port] = intf
        self.ports[intf] = port
        self.nameToIntf[name] = intf
        return intf

    def drop_intf(self, name: str) -> None:
        """Forget an interface that moved to another namespace."""
        intf = self.nameToIntf.pop(name, None)
        if intf is not None:
            port = self.ports.pop(intf)
            self.intfs.pop(port, None)


def start_nodes(specs: Iterable[tuple[str, str]], run_id: str, timeout_s: float = 120.0) -> list[EmuNode]:
    """Start one node per (name, kind), all shells at once; return them ready for ``cmd``.

    On failure every shell already started is killed before the error propagates.
    """
    nodes: list[EmuNode] = []
    try:
        for name, kind in specs:
            nodes.append(EmuNode(name, run_id, kind))
        deadline = time.monotonic() + timeout_s
        for n in nodes:
            n.wait_ready(deadline)
        for n in nodes:  # as Node.startShell does, but all shells at once
            n.sendCmd("unset HISTFILE; stty -echo; set +m")
        for n in nodes:
            n.waitOutput()
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes: list[EmuNode]) -> None:
    """Kill the shells (and their process groups) and release their ptys; idempotent."""
    import signal

    for n in nodes:
        if n.shell is not None and n.shell.poll() is None:
            try:
                os.killpg(n.shell.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for n in nodes:
        if n.shell is not None:
            try:
                n.shell.wait(timeout=10)
            except Exception:  # noqa: BLE001 - a zombie must not stop the rest of the teardown
                log.warning("shell of %s (pid %s) did not exit", n.name, n.shell.pid)
            n.outToNode.pop(n.stdout.fileno(), None)
            n.inToNode.pop(n.stdin.fileno(), None)
            n.stdin.close()
            os.close(n.slave)
            n.shell = None


class EmulatedNet(Mininet):
    """The live emulation seen as a ``mininet.net.Mininet``, for ``mininet.cli.CLI(net)``.

    It is not built by Mininet: every node is an :class:`EmuNode` in ``hosts`` (Mininet's CLI runs
    ``<node> <command>`` on any of them, ``pingall`` pings among them). It skips Mininet's global
    ``init`` (which rewrites sysctls of the host) and its ``stop`` hands over to the emulation.
    """

    def __init__(self, nodes: list[EmuNode], stop_callback) -> None:
        self.topo = None
        self.hosts = list(nodes)
        self.switches: list[Any] = []
        self.controllers: list[Any] = []
        self.links: list[Any] = []
        self.terms: list[Any] = []
        self.nameToNode = {n.name: n for n in nodes}
        self.built = True
        self.autoSetMacs = self.autoStaticArp = self.autoPinCpus = False
        self.waitConn = False
        self._stop_callback = stop_callback

    def stop(self) -> None:
        self._stop_callback()
