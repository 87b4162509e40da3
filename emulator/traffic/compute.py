"""The compute nodes' services at run time: started in their namespaces, held to their capacity by cgroups,
told each step where their satellite is.

One compiled program (``computed.c``, built by ``./install.sh`` into ``build/satnetem-computed``) serves every
compute node of a run: it forks one small child per node, which joins the node's network namespace, makes a
private mount namespace, joins the node's cgroups (:mod:`emulator.kernel.cgroups`), binds the node's address
only and then drops to an unprivileged user. The Python service (:mod:`emulator.traffic.service`) cost ~20 MB
of RSS per node; a child of this one costs a few hundred kB (:meth:`ComputeServices.memory` measures it).

Each node's folder ``/run/satnetem/<run_id>/nodes/<node>/`` holds ``whereami.json``
(:mod:`topologies.whereami`), replaced atomically each step; inside the node it is the read-only
``/run/satnetem/node/whereami.json`` (also in the service's environment as ``SATNETEM_WHEREAMI``, and
served as ``GET /whereami``).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pwd
import select
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from topologies.errors import ApplyError, ConfigError

from ..kernel.cgroups import MIN_CPU_SHARE, Layout, RunGroups
from ..nodes import mark

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
BINARY = REPO / "build" / "satnetem-computed"
SOURCE = Path(__file__).with_name("computed.c")
STATE_DIR = Path("/run/satnetem")
DEFAULT_PORT = 8080
_JSON = json.JSONEncoder(separators=(",", ":"))
#: mark of the program's parent process (in the host's namespaces), so that ``satnetem clean`` finds it
MARK_NAME = "@computed"


@dataclass(frozen=True)
class NodeService:
    """One compute node's service: where it runs and what it may use (cores; MB, None: no limit)."""

    name: str
    ns_path: str
    address: str
    cpu_share: float = 1.0
    memory_mb: float | None = None

    def __post_init__(self) -> None:
        for field_name in ("name", "ns_path", "address"):
            v = getattr(self, field_name)
            if not v or any(c in v for c in "\t\n,"):
                raise ConfigError(f"compute node {self.name!r}: {field_name} {v!r} is empty or holds a tab, "
                                  f"newline or comma", key=field_name)


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of process ``pid`` in kB, from ``/proc/<pid>/smaps_rollup``. PSS shares each page among
    the processes mapping it, so the PSS of all services adds up to what they cost together."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


class ComputeServices:
    """The services of a run's compute nodes.

    Parameters
    ----------
    run_id : str
    work_ms : float
        CPU time a request costs unless it asks for another (``GET /compute?work_ms=``).
    user : str
        The unprivileged user the services run as.
    layout : Layout, optional
        The cgroup layout (default: detected).
    """

    def __init__(self, run_id: str, work_ms: float = 5.0, user: str = "nobody", port: int = DEFAULT_PORT,
                 layout: Layout | None = None, state_dir: Path = STATE_DIR, binary: Path = BINARY) -> None:
        if not 0 <= work_ms <= 60_000:
            raise ConfigError(f"work must be in [0, 60000] ms, got {work_ms}", key="work_ms")
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise ConfigError(f"user {user!r} does not exist (the compute services run as it)", key="user") from None
        if pw.pw_uid == 0:
            raise ConfigError(f"user {user!r} is root; the compute services must run unprivileged", key="user")
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.run_id = run_id
        self.work_ms = work_ms
        self.port = port
        self.binary = binary
        self.groups = RunGroups(run_id, layout)
        self.dir = state_dir / run_id / "nodes"
        self.pids: dict[str, int] = {}
        self.services: dict[str, NodeService] = {}
        self.proc: subprocess.Popen | None = None
        self._power: dict[str, str] = {}  # node -> power state last enforced (absent: normal)

    def describe(self) -> str:
        """Which cgroup version and files hold the capacity (printed by the runner)."""
        return self.groups.layout.describe()

    def node_dir(self, name: str) -> Path:
        return self.dir / name

    def start(self, nodes: list[NodeService], timeout_s: float = 60.0) -> None:
        """Start every node's service; return when all are listening.

        Raises
        ------
        ApplyError
            The program is not built, or a node's service could not start (naming the node and why).
        """
        if not self.binary.is_file():
            raise ApplyError(f"the compute service is not built ({self.binary} missing): run ./install.sh",
                             operation="start compute services")
        if SOURCE.stat().st_mtime > self.binary.stat().st_mtime:
            log.warning("%s is older than %s: run ./install.sh to rebuild it", self.binary, SOURCE)
        self.groups.create()
        lines = []
        for n in nodes:
            if n.name in self.services:
                raise ConfigError(f"compute node {n.name!r} given twice", key="name")
            self.groups.add(n.name, n.cpu_share, n.memory_mb)
            d = self.node_dir(n.name)
            d.mkdir(parents=True, exist_ok=True)
            # Inside its mount namespace the service reaches this folder through its bind mount alone, so
            # only the folder itself is opened to it; the folders above stay closed to other users.
            os.chmod(self.dir, 0o700)
            os.chmod(d, 0o755)
            self.services[n.name] = n
            lines.append("\t".join([n.name, n.ns_path, n.address, str(d), ",".join(self.groups.attach_files(n.name))]))
        argv = ["satnetem-computed", "--port", str(self.port), "--work-ms", f"{self.work_ms:g}",
                "--uid", str(self.uid), "--gid", str(self.gid), "--mark", mark(self.run_id, MARK_NAME)]
        self.proc = subprocess.Popen(argv, executable=str(self.binary), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=None, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("".join(line + "\n" for line in lines).encode())
        self.proc.stdin.close()
        failed: list[str] = []
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        buf = b""
        done = False
        # poll, not select: the emulator holds thousands of descriptors, and select() takes none above 1,023
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not done:  # raw reads: a buffered readline would keep lines poll() cannot see
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1e3):
                raise ApplyError(f"compute services not ready in {timeout_s:g} s ({len(self.pids)} of {len(nodes)})",
                                 operation="start compute services")
            chunk = os.read(fd, 65536)
            buf += chunk
            *lines_in, buf = buf.split(b"\n")
            for raw in lines_in:
                word, name, rest = (raw.decode(errors="replace").split(" ", 2) + ["", ""])[:3]
                if word == "done":
                    done = True
                elif word == "ready":
                    self.pids[name] = int(rest)
                else:
                    failed.append(f"{name}: {rest}")
            done = done or not chunk
        if failed or len(self.pids) != len(nodes):
            why = "; ".join(failed[:3]) or "the program ended early"
            raise ApplyError(f"{len(failed) or len(nodes) - len(self.pids)} compute service(s) failed to start: {why}",
                             operation="start compute services")
        log.info("%d compute services started (%s)", len(self.pids), self.describe())

    def set_cpu_share(self, name: str, cpu_share: float) -> None:
        """Change node ``name``'s CPU share (cores) now, e.g. to throttle it."""
        self.groups.set_cpu_share(name, cpu_share)

    def apply_power(self, states: dict[str, str], throttle_share: float) -> dict[str, float]:
        """Enforce the nodes' power states (topologies.power): ``normal`` runs at the node's own share,
        ``throttled`` at ``throttle_share`` of it, ``stopped`` at the least share with a ``stopped`` flag
        in its folder, on which the service answers ``503`` to work. Only nodes whose state changed are
        touched. Returns node -> the share set now."""
        if not 0 <= throttle_share <= 1:
            raise ConfigError(f"throttle_share must be in [0, 1], got {throttle_share}", key="throttle_share")
        out = {}
        for name, state in states.items():
            if self._power.get(name, "normal") == state:
                continue
            base = self.services[name].cpu_share
            if state == "normal":
                share = base
            elif state in ("throttled", "stopped"):
                share = max(MIN_CPU_SHARE, base * throttle_share if state == "throttled" else MIN_CPU_SHARE)
            else:
                raise ConfigError(f"power state of {name!r} must be normal, throttled or stopped; got {state!r}",
                                  key="power")
            self.groups.set_cpu_share(name, share)
            flag = self.node_dir(name) / "stopped"
            if state == "stopped":
                flag.touch(mode=0o644)
            else:
                flag.unlink(missing_ok=True)
            self._power[name] = state
            out[name] = share
        return out

    def memory(self) -> dict[str, tuple[int, int]]:
        """Node -> (RSS, PSS) of its service process, kB."""
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = memory_kb(pid)
            except OSError:
                log.warning("service of %s (pid %d) is gone", name, pid)
        return out

    def write_whereami(self, views: dict[str, dict[str, Any]]) -> None:
        """Replace each node's ``whereami.json`` (node -> view) atomically: a reader sees the old or the new.

        Written with bare system calls relative to one folder descriptor: 1,584 files took 0.12-0.13 s this
        way against 0.23-0.45 s through Python file objects, chmod and full paths (same files, this machine,
        loaded; up to ~0.5 s when its disk is busy). The calls release the interpreter lock; the Python
        between them is what the step thread waits for."""
        encode = _JSON.encode
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name, view in views.items():
                tmp, dst = f"{name}/.whereami.json.tmp", f"{name}/whereami.json"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=dfd)
                try:
                    os.fchmod(fd, 0o644)  # whatever the umask: the service reads it as another user
                    os.write(fd, encode(view).encode())
                finally:
                    os.close(fd)
                os.replace(tmp, dst, src_dir_fd=dfd, dst_dir_fd=dfd)
        finally:
            os.close(dfd)

    def stop(self, timeout_s: float = 10.0) -> list[str]:
        """Stop every service, remove the run's cgroups and node folders; returns groups that stayed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the parent kills and reaps its children, then exits
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # its children die with it (PR_SET_PDEATHSIG)
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.pids.clear()
        left = self.groups.remove()
        if left:
            log.warning("cgroups left (processes still inside): %s", left)
        shutil.rmtree(self.dir, ignore_errors=True)
        try:  # the run's folder, if nothing else of the run (routing daemons) is in it
            self.dir.parent.rmdir()
        except OSError:
            pass
        return left


def request_work_ms(flows: Any) -> float:
    """A request's default work, ms: the largest ``work_ms`` of the scenario's request flows (5 without any)."""
    return max((f.work_ms for f in flows if f.kind == "request"), default=5.0)


def services_cost(svc: ComputeServices, start_s: float) -> dict[str, Any]:
    """What the started services cost (a run summary's ``compute_services``): node count, cgroup version, start
    time, RSS in total and median and PSS in total (kB)."""
    mem = svc.memory()
    rss = sorted(r for r, _ in mem.values())
    return {"nodes": len(svc.services), "cgroup": svc.groups.layout.version, "start_s": round(start_s, 2),
            "rss_kb_total": sum(rss), "rss_kb_median": rss[len(rss) // 2] if rss else 0,
            "pss_kb_total": sum(p for _, p in mem.values())}


def node_services(emu: Any) -> list[NodeService]:
    """A :class:`NodeService` for every compute node of the running emulation ``emu`` built here (on a host
    of a clustered run, its own: ``emu.local``), with the capacity its timeline node carries (``cpu_share``,
    ``memory_mb`` from its ``[[compute]]`` entry; default one core, no memory limit)."""
    tl = emu.timeline
    out = []
    for i in tl.nodes_of("compute"):
        if not emu.local[i]:
            continue
        node = tl.nodes[i]
        out.append(NodeService(node.name, emu.node(node.name).ns_path, emu.address_of(node.name),
                               float(node.info.get("cpu_share", 1.0)), node.info.get("memory_mb")))
    return out


class WhereamiWriter:
    """Keeps every compute node's ``whereami.json`` at the last step posted, from a thread of its own (for
    1,584 nodes the views take ~20 ms and the files 0.1-0.5 s, which the step thread should not wait for).
    A step posted while the last is still being written replaces any not yet started: the files skip to
    the newest.

    With ``throttle_share`` given and power states in the timeline (``compute_power``), it first enforces
    each node's state of that step (:meth:`ComputeServices.apply_power`).
    """

    def __init__(self, services: ComputeServices, timeline: Any, throttle_share: float | None = None) -> None:
        from topologies.whereami import WhereAmI

        self.services = services
        names = set(services.services)
        nodes = [i for i in timeline.nodes_of("compute") if timeline.nodes[i].name in names]
        self.where = WhereAmI(timeline, nodes)
        power = getattr(timeline, "compute_power", None)
        self.throttle_share = throttle_share if power is not None else None
        if power is not None and self.throttle_share is not None:
            rows = {n: k for k, n in enumerate(timeline.nodes_of("compute"))}
            self._power = power[[rows[i] for i in nodes]]
            self._names = [timeline.nodes[i].name for i in nodes]
            self._state_names = importlib.import_module("topologies.power").POWER_STATES
        self._cond = threading.Condition()
        self._step: int | None = None
        self._closed = False
        self.written = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="whereami", daemon=True)
        self._thread.start()

    def post(self, step: int) -> None:
        with self._cond:
            self._step = step
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._step is None and not self._closed:
                    self._cond.wait()
                if self._step is None:
                    return
                step, self._step = self._step, None
            try:
                if self.throttle_share is not None:
                    self.services.apply_power({n: self._state_names[int(c)] for n, c in
                                               zip(self._names, self._power[:, step], strict=True)},
                                              self.throttle_share)
                self.services.write_whereami(self.where.views(step))
                self.written += 1
            except (OSError, ValueError) as e:  # logged once; the run goes on without current files
                if self.error is None:
                    log.warning("whereami files not written at step %d: %s", step, e)
                self.error = e

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what was posted last, then end the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout_s)
