"""What a run needs from the machine (descriptors, processes, ptys, kernel memory) and whether it has it.

:func:`needs` is pure arithmetic on the timeline's size (``satnetem plan`` prints it, no root);
:func:`check` compares it with this machine's limits and raises a one-line :class:`ConfigError` before
anything is built (``Emulation.build`` calls it).

Per-object kernel memory, measured here (kernel 6.18, x86_64; ``/tmp``-free scratch runs of 1,000
namespaces and 2,000 veth pairs, the fall of MemAvailable and the growth of Slab per object):

* a network namespace with its sysctls written and ``lo``: MemAvailable -270 to -415 kB, Slab +229 kB
  (SUnreclaim +205 kB), per-cpu +7 kB. Holding it costs one bind mount in the holder's private mount
  namespace (a ``struct mount`` and a tmpfs inode, < 1 kB) and no descriptor or process.
* a veth pair (two devices, down, no qdisc): MemAvailable -128 kB, Slab +93 kB.
* created at 1.0-3.3 ms per namespace in the holder (unshare + bind mount + 5 sysctls) and 1.0 ms per
  veth pair sent one at a time; 1,000 namespaces were gone (Slab back to baseline) 2 s after the holder
  exited.

The estimate below uses 400 kB per namespace and 160 kB per veth pair (the larger figures, plus the
pair's addresses and qdiscs); routes and the shaper's queues come on top.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from topologies.errors import ConfigError
from topologies.timeline import LINK_CLASSES, Timeline

#: Kernel memory per network namespace (MemAvailable fall, measured 270-415 kB; see module docstring), kB.
NAMESPACE_KB = 400
#: Kernel memory per veth pair with addresses and shaping qdiscs (128 kB measured bare), kB.
VETH_PAIR_KB = 160
#: Shapers whose delay daemon holds one descriptor per namespace in shard processes
#: (:mod:`emulator.shaping.delayd`: one per core, more where the open-file limit asks).
SHARDED_DAEMON = ("userspace",)
_HOLDER_MOUNTS = 256  # the holder's copy of the host's mounts, and its tmpfs, besides one per namespace


@dataclass(frozen=True)
class RunNeeds:
    """What building a timeline needs (see :func:`needs`); counts are what the run *adds* to the machine."""

    nodes: int
    veth_pairs: int
    shaper: str
    processes: int  #: started by the build: the namespace holder, the route worker, the shaper's daemons
    ptys: int  #: opened by the build (a node's shell, on a pty, starts only when asked for)
    fds_min: int  #: open-file limit the runner needs at least (sockets reopened as needed above it)
    fds_all_open: int  #: open-file limit under which every namespace's socket stays open (fastest steps)
    shaper_fds: int  #: descriptors the busiest shaper process holds (namespaces spread over its shards)
    kernel_mb: float  #: estimated kernel memory of the namespaces and veths, MB

    @property
    def fds_required(self) -> int:
        """The open-file limit without which the run cannot work (runner or shaper daemon)."""
        return max(self.fds_min, self.shaper_fds)

    def describe(self) -> str:
        """One line for ``plan`` and the build log."""
        return (f"{self.processes} processes, {self.ptys} ptys, open-file limit >= {self.fds_required} "
                f"({self.fds_all_open} keeps every namespace socket open), ~{self.kernel_mb:,.0f} MB kernel "
                f"memory for {self.nodes} namespaces and {self.veth_pairs} veth pairs")


def needs(n_nodes: int, n_veth_pairs: int, shaper: str = "userspace", nofile: int | None = None,
          cores: int | None = None, route_worker: int = 1) -> RunNeeds:
    """What building ``n_nodes`` namespaces joined by ``n_veth_pairs`` veth pairs needs.

    Parameters
    ----------
    n_nodes, n_veth_pairs : int
        Namespaces, and veth pairs (one per link slot plus a spare per gateway antenna).
    shaper : str
        Shaping backend name (``userspace``, ``netem``).
    nofile : int, optional
        Open-file limit each process may reach (default: this process's hard RLIMIT_NOFILE): decides
        how many shards the delay daemon needs.
    cores : int, optional
        CPU cores (default: this machine's): the delay daemon starts at least one shard per core.
    route_worker : int
        Forked children computing routes (:mod:`emulator.routeworker`; none with routing daemons, two with
        route epochs: the second computes slot boundaries' tables ahead). True counts one.
    """
    from emulator.rtnl import FDS_RESERVED, MIN_SOCKETS, socket_budget

    def _all_open(n: int) -> int:  # the smallest limit whose socket budget is n
        limit = max(n + FDS_RESERVED, 8 * n // 7 - 8)
        while socket_budget(limit) < n:
            limit += 1
        return limit

    if nofile is None:
        nofile = machine_limits().nofile_hard
    shaper_procs = shaper_fds = 0
    if shaper in SHARDED_DAEMON:
        from emulator.shaping.delayd import FD_MARGIN

        per = max(1, nofile - FD_MARGIN)
        shaper_procs = max(cores or os.cpu_count() or 1, -(-n_nodes // per))
        shaper_fds = min(-(-n_nodes // shaper_procs), per) + FD_MARGIN
    kb = n_nodes * NAMESPACE_KB + n_veth_pairs * VETH_PAIR_KB
    return RunNeeds(nodes=n_nodes, veth_pairs=n_veth_pairs, shaper=shaper,
                    processes=1 + int(route_worker) + shaper_procs, ptys=0,
                    fds_min=FDS_RESERVED + MIN_SOCKETS,
                    fds_all_open=_all_open(n_nodes),
                    shaper_fds=int(shaper_fds), kernel_mb=kb / 1024)


@dataclass(frozen=True)
class Limits:
    """This machine's limits that a run meets."""

    nofile_hard: int  #: RLIMIT_NOFILE hard limit of this process (the soft one can be raised to it)
    ptys_free: int  #: /proc/sys/kernel/pty/max - nr
    mem_available_mb: float
    netns_max: int = 1 << 30  #: /proc/sys/user/max_net_namespaces (all of this user's, ours included)
    mounts_max: int = 1 << 30  #: /proc/sys/fs/mount-max: mounts in one mount namespace (the holder's)


def machine_limits() -> Limits:
    """Read this process's and the kernel's limits (no root needed)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 30
    try:
        ptys = _read_int("/proc/sys/kernel/pty/max") - _read_int("/proc/sys/kernel/pty/nr")
    except (OSError, ValueError):
        ptys = 1 << 20
    mem = float("inf")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    mem = int(line.split()[1]) / 1024
    except OSError:
        pass
    extra = []
    for path in ("/proc/sys/user/max_net_namespaces", "/proc/sys/fs/mount-max"):
        try:
            extra.append(_read_int(path))
        except (OSError, ValueError):
            extra.append(1 << 30)
    return Limits(int(hard), int(ptys), mem, *extra)


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().split()[0])


def check(n: RunNeeds, limits: Limits | None = None) -> None:
    """Raise a one-line ConfigError if this machine cannot hold the run ``n``.

    Raises
    ------
    ConfigError
        The open-file limit, free ptys or available memory is below what the run needs.
    """
    lim = limits or machine_limits()
    if lim.nofile_hard < n.fds_min:
        raise ConfigError(f"this run needs an open-file limit of at least {n.fds_min}; this process may open "
                          f"at most {lim.nofile_hard} (raise it: ulimit -n)", key="nofile")
    if lim.nofile_hard < n.shaper_fds:
        raise ConfigError(f"each process of the {n.shaper} shaper's daemon needs {n.shaper_fds} descriptors for "
                          f"{n.nodes} namespaces, above this process's open-file limit of {lim.nofile_hard} "
                          f"(raise it: ulimit -n)", key="nofile")
    if lim.netns_max < n.nodes:
        raise ConfigError(f"this run needs {n.nodes} network namespaces; the kernel allows {lim.netns_max} "
                          f"(user.max_net_namespaces)", key="namespaces")
    if lim.mounts_max < n.nodes + _HOLDER_MOUNTS:
        raise ConfigError(f"the namespace holder needs {n.nodes + _HOLDER_MOUNTS} mounts; the kernel allows "
                          f"{lim.mounts_max} per mount namespace (fs.mount-max)", key="namespaces")
    if lim.ptys_free < n.ptys:
        raise ConfigError(f"this run needs {n.ptys} ptys, the kernel has {lim.ptys_free} free", key="ptys")
    if lim.mem_available_mb < n.kernel_mb:
        raise ConfigError(f"this run needs ~{n.kernel_mb:,.0f} MB of kernel memory for {n.nodes} namespaces and "
                          f"{n.veth_pairs} veth pairs; {lim.mem_available_mb:,.0f} MB are available", key="memory")


def descendants(root: int | None = None) -> set[int]:
    """Pids of every process descended from ``root`` (default: this process), read from /proc."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out: set[int] = set()
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def ptys_in_use(root: int | None = None) -> int:
    """Distinct ptys (``/dev/pts/N``) open in ``root`` (default: this process) or its descendants."""
    root = os.getpid() if root is None else root
    seen: set[str] = set()
    for pid in {root} | descendants(root):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("/dev/pts/"):
                seen.add(target)
    return len(seen)


def needs_of_timeline(tl: Timeline, shaper: str = "userspace", nofile: int | None = None) -> RunNeeds:
    """:func:`needs` of building ``tl``: a namespace per node, a veth pair per link slot and a spare pair
    per gateway antenna (:mod:`emulator.addressing`). ``shaper`` "auto" counts as ``userspace`` (the
    backend with a daemon, chosen where the kernel lacks sch_netem)."""
    spares = int((tl.link_class == LINK_CLASSES.index("gsl")).sum())
    return needs(len(tl.nodes), int(tl.n_links) + spares, "userspace" if shaper == "auto" else shaper, nofile)
