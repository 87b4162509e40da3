"""CPU and memory capacity of compute nodes, enforced by the kernel's control groups.

Each run gets one group ``satnetem-<run_id>`` per controller and one child group per compute node. With v1
it is made under the cgroup the emulator itself is in (so a container's or a session's own limits still
hold above it). With v2 it is made at the root of the hierarchy this process sees: v2 lets a group give
controllers to its children only while it holds no process itself, and the emulator's own group (a login
session's scope, say) holds the emulator; the root is exempt. A
node's service processes are put in its child; nothing else is, in particular not the shaper's delay
daemon: it is started by the emulator and stays in the emulator's own group.

Both cgroup versions are handled, chosen by what is mounted (:func:`detect`):

* v2 (one unified hierarchy with the ``cpu`` and ``memory`` controllers): ``cpu.max`` holds
  ``<quota_us> <period_us>`` and ``memory.max`` bytes;
* v1 (one hierarchy per controller): ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` and
  ``memory.limit_in_bytes``.

A CPU share of ``s`` (a fraction of one core) becomes a quota of ``s x period`` of CPU time per period of
:data:`PERIOD_US`: the group runs at most that long per period, then waits for the next one. The period is
short so that a request of a few tens of ms sees the share as a rate rather than as whole periods of stall.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from topologies.errors import ApplyError, ConfigError

log = logging.getLogger(__name__)

PREFIX = "satnetem-"
#: CFS bandwidth period, us. 20 ms: a quarter-core node runs 5 ms then waits 15 ms, so a request of
#: 50 ms of CPU is stretched smoothly to ~200 ms; with the kernel's default 100 ms it would run 25 ms and
#: then stall 75 ms, and its time would depend on where in the period it arrived. The kernel's minimum
#: quota is 1 ms, hence :data:`MIN_CPU_SHARE` = 0.05 with this period.
PERIOD_US = 20_000
MIN_QUOTA_US = 1_000
MIN_CPU_SHARE = MIN_QUOTA_US / PERIOD_US
#: a memory limit below this leaves no room for the service's own pages (its RSS is ~0.2 MB)
MIN_MEMORY_MB = 1.0


def quota_us(cpu_share: float, period_us: int = PERIOD_US) -> int:
    """CFS quota (us of CPU per ``period_us``) for ``cpu_share`` cores.

    Raises
    ------
    ConfigError
        If the share is not finite or would give a quota below the kernel's 1 ms.
    """
    if not (cpu_share == cpu_share and cpu_share != float("inf")) or cpu_share * period_us < MIN_QUOTA_US:
        raise ConfigError(f"cpu_share must be a finite number >= {MIN_QUOTA_US / period_us:g} (a quota of at "
                          f"least {MIN_QUOTA_US} us per {period_us} us period), got {cpu_share}", key="cpu_share")
    return int(round(cpu_share * period_us))


@dataclass(frozen=True)
class Layout:
    """Where the cgroup controllers are: ``version`` "v1" or "v2", and the directory under which this
    process's groups live for ``cpu`` and for ``memory`` (the same directory for v2)."""

    version: str
    cpu_dir: Path
    memory_dir: Path

    def describe(self) -> str:
        if self.version == "v2":
            return f"cgroup v2 (cpu.max, memory.max) under {self.cpu_dir}"
        return (f"cgroup v1 (cpu.cfs_quota_us/cpu.cfs_period_us under {self.cpu_dir}, memory.limit_in_bytes "
                f"under {self.memory_dir})")


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fs type, super options) of each cgroup mount in ``mountinfo`` text."""
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f = left.split()
        r = right.split()
        if len(f) >= 5 and len(r) >= 3 and r[0] in ("cgroup", "cgroup2"):
            out.append((f[3], f[4], r[0], set(r[2].split(","))))
    return out


def _own_groups(proc_cgroup: str) -> dict[str, str]:
    """Controller (or "" for v2) -> this process's group path, from ``/proc/self/cgroup`` text."""
    out: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for c in parts[1].split(",") if parts[1] else [""]:
                out[c] = parts[2]
    return out


def _under(mount_root: str, mount_point: str, group: str) -> Path:
    rel = os.path.relpath(group, mount_root) if group.startswith(mount_root) else "."
    return Path(os.path.normpath(os.path.join(mount_point, rel)))


def detect(mountinfo: str | None = None, proc_cgroup: str | None = None) -> Layout:
    """The cgroup layout of this machine: v2 if a unified hierarchy offers both ``cpu`` and ``memory``,
    else v1 if both have a hierarchy of their own.

    Parameters
    ----------
    mountinfo, proc_cgroup : str, optional
        Texts of ``/proc/self/mountinfo`` and ``/proc/self/cgroup`` (read when not given).

    Raises
    ------
    ApplyError
        Neither layout is available (no ``cpu`` or no ``memory`` controller mounted).
    """
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    if proc_cgroup is None:
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    mounts = _mounts(mountinfo)
    own = _own_groups(proc_cgroup)
    for _root, point, fstype, _ in mounts:
        if fstype != "cgroup2":
            continue
        try:
            controllers = set((Path(point) / "cgroup.controllers").read_text().split())
        except OSError:
            continue
        if {"cpu", "memory"} <= controllers:
            return Layout("v2", Path(point), Path(point))
    dirs: dict[str, Path] = {}
    for root, point, fstype, opts in mounts:
        for c in ("cpu", "memory"):
            if fstype == "cgroup" and c in opts and c not in dirs:
                dirs[c] = _under(root, point, own.get(c, "/"))
    if "cpu" in dirs and "memory" in dirs:
        return Layout("v1", dirs["cpu"], dirs["memory"])
    raise ApplyError("no cgroup hierarchy with the cpu and memory controllers is mounted (v2: cpu and memory in "
                     "cgroup.controllers; v1: hierarchies of cpu and of memory)", operation="cgroups")


def _write(path: Path, value: str, what: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise ApplyError(f"cannot write {value!r} to {path}: {e.strerror}", operation=what) from None


class RunGroups:
    """The cgroups of one run: ``satnetem-<run_id>`` with a child per compute node.

    Parameters
    ----------
    run_id : str
    layout : Layout, optional
        Default: :func:`detect`.
    """

    def __init__(self, run_id: str, layout: Layout | None = None) -> None:
        self.layout = layout or detect()
        self.run_id = run_id
        name = PREFIX + run_id
        self.cpu_root = self.layout.cpu_dir / name
        self.memory_root = self.layout.memory_dir / name
        self.nodes: dict[str, tuple[float, float | None]] = {}

    @property
    def v2(self) -> bool:
        return self.layout.version == "v2"

    def _dirs(self, node: str | None = None) -> list[Path]:
        roots = [self.cpu_root] if self.v2 else [self.cpu_root, self.memory_root]
        return [r / node if node else r for r in roots]

    def create(self) -> None:
        """Make the run's groups (idempotent)."""
        if self.v2:  # the controllers must be enabled for the children of each level we create
            _write(self.layout.cpu_dir / "cgroup.subtree_control", "+cpu +memory", "cgroups: enable controllers")
        for d in self._dirs():
            d.mkdir(exist_ok=True)
        if self.v2:
            _write(self.cpu_root / "cgroup.subtree_control", "+cpu +memory", "cgroups: enable controllers")

    def set_weight(self, weight: int) -> None:
        """The run group's CPU weight against the host's other tasks (v1 ``cpu.shares``, kernel default 1024,
        2..262144; v2 ``cpu.weight``, default 100, 1..10000). The quota caps a node; the weight decides
        whether it gets up to its quota when the host is busy. Left at the default, a run's nodes compete
        as one task of the emulator's group would."""
        lo, hi, f = (1, 10_000, "cpu.weight") if self.v2 else (2, 262_144, "cpu.shares")
        if not lo <= weight <= hi:
            raise ConfigError(f"cpu weight must be in [{lo}, {hi}] ({f}), got {weight}", key="cpu_weight")
        _write(self.cpu_root / f, str(weight), "cgroups: run weight")

    def add(self, node: str, cpu_share: float, memory_mb: float | None) -> None:
        """A group for ``node`` with its CPU share (cores) and memory limit (MB; None: no limit)."""
        if memory_mb is not None and not memory_mb >= MIN_MEMORY_MB:
            raise ConfigError(f"memory_mb must be >= {MIN_MEMORY_MB:g}, got {memory_mb}", key="memory_mb")
        for d in self._dirs(node):
            d.mkdir(exist_ok=True)
        self.nodes[node] = (cpu_share, memory_mb)
        self.set_cpu_share(node, cpu_share)
        limit = "max" if memory_mb is None else str(int(memory_mb * 2**20))
        if self.v2:
            _write(self.cpu_root / node / "memory.max", limit, f"cgroups: memory of {node}")
        else:
            _write(self.memory_root / node / "memory.limit_in_bytes", "-1" if limit == "max" else limit,
                   f"cgroups: memory of {node}")

    def set_cpu_share(self, node: str, cpu_share: float) -> None:
        """Change ``node``'s CPU share now (cores; the next CFS period uses it)."""
        if node not in self.nodes:
            raise ConfigError(f"{node!r} has no cgroup in run {self.run_id} (compute nodes: "
                              f"{', '.join(sorted(self.nodes)) or 'none'})", key="node")
        q = quota_us(cpu_share)
        if self.v2:
            _write(self.cpu_root / node / "cpu.max", f"{q} {PERIOD_US}", f"cgroups: cpu share of {node}")
        else:
            d = self.cpu_root / node
            # the kernel checks quota against period at each write: lower the quota first, then set both
            _write(d / "cpu.cfs_quota_us", str(min(q, PERIOD_US)), f"cgroups: cpu share of {node}")
            _write(d / "cpu.cfs_period_us", str(PERIOD_US), f"cgroups: cpu share of {node}")
            _write(d / "cpu.cfs_quota_us", str(q), f"cgroups: cpu share of {node}")
        self.nodes[node] = (cpu_share, self.nodes[node][1])

    def cpu_share(self, node: str) -> float:
        """The share the kernel holds for ``node`` now (read back from the group)."""
        d = self.cpu_root / node
        if self.v2:
            quota, period = (d / "cpu.max").read_text().split()
            return float("inf") if quota == "max" else int(quota) / int(period)
        q_us = int((d / "cpu.cfs_quota_us").read_text())
        return float("inf") if q_us < 0 else q_us / int((d / "cpu.cfs_period_us").read_text())

    def attach_files(self, node: str) -> list[str]:
        """The files a process writes its own pid to, to join ``node``'s groups."""
        name = "cgroup.procs"
        return [str(d / name) for d in self._dirs(node)]

    def pids(self, node: str) -> set[int]:
        out: set[int] = set()
        for f in self.attach_files(node):
            try:
                out |= {int(x) for x in Path(f).read_text().split()}
            except OSError:
                pass
        return out

    def remove(self, timeout_s: float = 5.0) -> list[str]:
        """Remove the run's groups (their processes must be gone: they are waited for up to ``timeout_s``);
        returns the directories that could not be removed."""
        return remove_tree([*self._dirs()], timeout_s)


def remove_tree(roots: list[Path], timeout_s: float = 5.0) -> list[str]:
    """rmdir every group under ``roots`` (children first); a group whose last process is still exiting
    (EBUSY) is retried until ``timeout_s``. Returns the directories left."""
    left: list[str] = []
    for root in roots:
        if not root.is_dir():
            continue
        groups = sorted((Path(dp) for dp, _, _ in os.walk(root)), key=lambda p: -len(p.parts))
        for g in groups:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    g.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        left.append(str(g))
                        break
                    time.sleep(0.02)
    return left


def run_roots(run_id: str | None = None, layout: Layout | None = None) -> list[Path]:
    """The groups of run ``run_id`` (all our runs if None) that exist now, for ``satnetem clean``."""
    try:
        lay = layout or detect()
    except (ApplyError, OSError):
        return []
    out: list[Path] = []
    for d in {lay.cpu_dir, lay.memory_dir}:
        if d.is_dir():
            out += sorted(d.glob(PREFIX + (run_id if run_id else "*")))
    return [p for p in out if p.is_dir()]


def tasks_in(roots: list[Path]) -> set[int]:
    """Pids of every process in the groups under ``roots``."""
    out: set[int] = set()
    for root in roots:
        for dp, _, files in os.walk(root):
            if "cgroup.procs" in files:
                try:
                    out |= {int(x) for x in (Path(dp) / "cgroup.procs").read_text().split()}
                except OSError:
                    pass
    return out
