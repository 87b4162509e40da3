"""Mininet nodes whose shells start when first asked for, and a Mininet object that Mininet's CLI can drive.

A node is a network namespace held by the run's namespace holder (:mod:`emulator.kernel.holder`), not a
process: building 10^4 nodes starts no shell and opens no pty. :class:`EmuNode` is still a Mininet
``Node``: the first ``cmd``/``sendCmd`` (Mininet's CLI, ``emu.node(name).cmd(...)``) starts a bash on a
pty inside the namespace (``nsenter --net=<path>``) and waits for its prompt; ``popen`` needs no shell.
Shells started so far are killed at teardown (:func:`stop_nodes`); at most :data:`MAX_SHELLS` live at
once (the least recently used idle one is stopped to start another, so a shell's working directory and
variables last only while it stays in use).

Every shell carries the argument ``satnetem:<run_id>:<name>`` so that :mod:`emulator.clean` can find it
(stock Mininet marks its shells ``mininet:<name>``, and ``mn -c`` kills those; ours are left to
``satnetem clean``).
"""

from __future__ import annotations

import logging
import os
import pty
import select
import signal
import subprocess
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from mininet.link import Intf
from mininet.net import Mininet
from mininet.node import Node

from topologies.errors import ApplyError

log = logging.getLogger(__name__)

MARK = "satnetem"
#: How long a lazily started shell may take to show its first prompt, s.
SHELL_START_TIMEOUT_S = 30.0
#: Most node shells alive at once: beyond it, starting one stops the least recently used idle shell (its
#: node gets a fresh one when next asked). Mininet's ``pingall`` on 10^4 nodes would otherwise need 10^4
#: ptys, and the kernel has 4,096.
MAX_SHELLS = 256
_live: OrderedDict[int, EmuNode] = OrderedDict()  # id(node) -> node with a running shell, least recent first
#: Run by ``sh -c`` (a fixed text; the command comes as arguments) in the shell's new mount namespace.
_REMOUNT_SYSFS = 'mount -t sysfs satnetem-sysfs /sys && exec "$@"'


def mark(run_id: str, name: str) -> str:
    """The process argument that marks node ``name``'s shell of run ``run_id``."""
    return f"{MARK}:{run_id}:{name}"


class EmuNode(Node):
    """A Mininet ``Node`` for the network namespace at ``ns_path``; its shell starts on first use.

    Parameters
    ----------
    name : str
    run_id : str
    kind : str
        Node kind of the timeline (sat, gateway, host, compute).
    ns_path : str
        Path of the node's network namespace (a bind mount in the holder's mount namespace, reached
        through ``/proc/<holder>/root``); any process may open it.
    """

    # Mininet's Node leaves these untyped; a node without a shell has None in each
    shell: subprocess.Popen | None
    stdin: Any
    stdout: Any
    pollOut: Any
    master: int | None
    slave: int | None
    pid: int | None
    waiting: bool

    def __init__(self, name: str, run_id: str, kind: str, ns_path: str, **params) -> None:
        self.run_id = run_id
        self.kind = kind
        self.ns_path = ns_path
        self._building = True  # Node.__init__ calls startShell(): not yet
        super().__init__(name, inNamespace=True, **params)
        self._building = False

    # ----------------------------------------------------------------------------- the shell
    def startShell(self, mnopts=None) -> None:
        """Start the node's bash on a pty (once; called by the first ``cmd``/``sendCmd``).

        As Mininet's, but joining the existing namespace with nsenter instead of creating one with
        ``mnexec -n``. Like ``mnexec -n`` it gives the shell a private mount namespace with sysfs
        mounted afresh there, so that ``/sys/class/net`` lists the node's interfaces, not the host's
        (sysfs shows the network namespace of whoever mounted it). Popen(close_fds=True) closes
        inherited descriptors with one close_range.
        """
        if self._building:
            return
        if self.shell is not None and self.shell.poll() is None:
            _live[id(self)] = self
            _live.move_to_end(id(self))
            return
        self.stop_shell()  # a shell that exited: release its pty before starting another
        for other in list(_live.values()):
            if len(_live) < MAX_SHELLS:
                break
            if not other.waiting:  # never one in the middle of a command
                other.stop_shell()
        cmd = ["nsenter", f"--net={self.ns_path}", "--", "unshare", "--mount", "--propagation", "private",
               "--", "sh", "-c", _REMOUNT_SYSFS, "sh",
               "env", "PS1=" + chr(127), "bash", "--norc", "--noediting", "-is", mark(self.run_id, self.name)]
        self.master, self.slave = pty.openpty()
        try:
            self.shell = self._popen(cmd, stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                     close_fds=True, start_new_session=True)
        except BaseException:
            os.close(self.master)
            os.close(self.slave)
            self.master = self.slave = None
            raise
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
        _live[id(self)] = self
        try:
            self._wait_prompt(time.monotonic() + SHELL_START_TIMEOUT_S)
            Node.sendCmd(self, "unset HISTFILE; stty -echo; set +m")
            Node.waitOutput(self)
        except BaseException:
            self.stop_shell()
            raise

    def _wait_prompt(self, deadline: float) -> None:
        data = ""
        while not data.endswith(chr(127)):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self.pollOut.poll(left_ms):
                raise ApplyError(f"shell did not start in time (output: {data[-200:]!r})", node=self.name,
                                 operation="start shell")
            chunk = self.read(1024)
            shell = self.shell
            if not chunk and shell is not None and shell.poll() is not None:
                raise ApplyError(f"shell exited with status {shell.returncode}: {data[-200:]!r}",
                                 node=self.name, operation="start shell")
            data += chunk
        self.waiting = False

    def sendCmd(self, *args, **kwargs) -> None:
        self.startShell()
        super().sendCmd(*args, **kwargs)

    def cmd(self, *args, **kwargs):
        self.startShell()
        return super().cmd(*args, **kwargs)

    def stop_shell(self) -> None:
        """Kill the shell (and its process group) and release its pty; idempotent."""
        _live.pop(id(self), None)
        shell = self.shell
        if shell is None:
            return
        if shell.poll() is None:
            try:
                os.killpg(shell.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            shell.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a zombie must not stop the rest of the teardown
            log.warning("shell of %s (pid %s) did not exit", self.name, shell.pid)
        if self.stdout is not None:
            self.outToNode.pop(self.stdout.fileno(), None)
            self.inToNode.pop(self.stdin.fileno(), None)
            self.stdin.close()
        if self.slave is not None:
            os.close(self.slave)
        self.shell = self.stdin = self.stdout = self.pollOut = None
        self.master = self.slave = None
        self.pid = None
        self.waiting = False

    def terminate(self) -> None:
        self.stop_shell()

    # ----------------------------------------------------------------------------- processes
    def popen(self, *args, **kwargs):
        """As Mininet's ``Node.popen``, but joining only the node's *network* namespace (no shell needed).

        ``mnexec -a`` also joins the shell's mount namespace, which resets the root directory: run from
        a chroot (the netem test VM runs the host's tree that way) the program then cannot find its
        files. ``setsid`` detaches it from our terminal as ``mnexec -d`` does.
        """
        kwargs.setdefault("mncmd", ["setsid", "nsenter", f"--net={self.ns_path}", "--"])
        return super().popen(*args, **kwargs)

    # ----------------------------------------------------------------------------- interfaces
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


def make_nodes(specs: Iterable[tuple[str, str, str]], run_id: str) -> list[EmuNode]:
    """One :class:`EmuNode` per (name, kind, namespace path); no process is started."""
    return [EmuNode(name, run_id, kind, path) for name, kind, path in specs]


def stop_nodes(nodes: list[EmuNode]) -> None:
    """Kill the shells started so far (and their process groups), release their ptys; idempotent."""
    started = [n for n in nodes if n.shell is not None]
    for n in started:
        shell = n.shell
        if shell is not None and shell.poll() is None:
            try:
                os.killpg(shell.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for n in started:
        n.stop_shell()


class EmulatedNet(Mininet):
    """The live emulation seen as a ``mininet.net.Mininet``, for ``mininet.cli.CLI(net)``.

    It is not built by Mininet: every node is an :class:`EmuNode` in ``hosts`` (Mininet's CLI runs
    ``<node> <command>`` on any of them, starting its shell then; ``pingall`` pings among them). It skips
    Mininet's global ``init`` (which rewrites sysctls of the host) and its ``stop`` hands over to the
    emulation.
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
