"""Remove everything an emulation left behind: its processes, namespaces and state files.

What is ours is recognised, never guessed from broad names:

* node shells carry the argument ``satnetem:<run_id>:<node>`` (see :mod:`emulator.nodes`), the run's
  namespace holder ``satnetem:<run_id>:@netns-holder`` (see :mod:`emulator.kernel.holder`);
* the namespaces the holder holds are ours: their inodes are read from its bind mounts
  (``net:[<inode>]`` in ``/proc/<holder>/mountinfo``); so are the namespaces of the shells;
* any process living in one of our namespaces (pings, iperf, routing daemons started in a node) is
  ours too, found by the namespace's inode;
* the userspace shaper daemon's command line contains ``emulator.shaping.delayd`` (with a run id
  given, only those whose command line names the run or that live in one of its namespaces);
* any process in a namespace recorded in a state file ``/run/satnetem/<run_id>.json`` (so that
  processes started in a node are found even after the node's shell died with a killed emulator);
* named namespaces ``/var/run/netns/satnetem-*``, state files ``/run/satnetem/<run_id>*`` and run
  folders ``/run/satnetem/<run_id>/`` (routing daemons' configurations, sockets and default logs);
* the compute nodes' cgroups ``satnetem-<run_id>`` (:mod:`emulator.kernel.cgroups`) and any process in them.

Network namespaces and the veths in them vanish with their last reference: the holder's bind mount
(gone with the holder's mount namespace when the holder dies) and every process inside. ``clean`` kills
with SIGKILL, waits for the processes to be gone and reports anything still alive. It never touches
another user's Mininet (``mininet:`` shells), the host's interfaces or the process calling it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .kernel.cgroups import remove_tree, run_roots, tasks_in
from .kernel.holder import MOUNT_DIR
from .nodes import MARK

log = logging.getLogger(__name__)

STATE_DIR = Path("/run/satnetem")
NETNS_DIR = Path("/var/run/netns")
DELAYD = "emulator.shaping.delayd"
RUN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")


@dataclass
class CleanReport:
    """What :func:`clean` did. ``remaining`` lists pids that survived SIGKILL (should be empty)."""

    killed: list[int] = field(default_factory=list)
    namespaces: int = 0
    netns_removed: list[str] = field(default_factory=list)
    state_files_removed: list[str] = field(default_factory=list)
    cgroups_removed: list[str] = field(default_factory=list)
    remaining: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.remaining


def _protected() -> set[int]:
    """This process and its ancestors: never killed."""
    pids = set()
    pid = os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    pids.add(1)
    return pids


def _processes() -> list[tuple[int, list[str], int]]:
    """(pid, argv, network-namespace inode) of every process we can read."""
    out: list[tuple[int, list[str], int]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        out.append((pid, argv, ino))
    return out


def find_ours(run_id: str | None = None) -> tuple[set[int], set[int]]:
    """Pids of our processes and inodes of our network namespaces (for ``run_id``, or all runs)."""
    prefix = f"{MARK}:{run_id}:" if run_id else f"{MARK}:"
    procs = _processes()
    root_ns = os.stat("/proc/self/ns/net").st_ino  # /proc/1 may be unreadable in a container
    shells = {pid for pid, argv, _ in procs if any(a.startswith(prefix) for a in argv)}
    inodes = {ino for pid, _, ino in procs if pid in shells and ino != root_ns}
    for pid in shells:  # the holder's (the shells' mountinfo has none of ours: it is the host's)
        inodes |= held_netns(pid)
    inodes |= _state_inodes(run_id)
    inodes -= {root_ns}
    pids = set(shells)
    for pid, argv, ino in procs:
        ours_daemon = any(DELAYD in a for a in argv) and (run_id is None or any(run_id in a for a in argv))
        if ino in inodes or ours_daemon:
            pids.add(pid)
    return pids - _protected(), inodes


_NSFS_ROOT = re.compile(r"^net:\[(\d+)\]$")


def held_netns(pid: int) -> set[int]:
    """Inodes of the network namespaces a namespace holder ``pid`` holds: bind mounts under its
    :data:`~emulator.kernel.holder.MOUNT_DIR` whose root in its mountinfo reads ``net:[<inode>]``; empty
    for a process in the host's mount namespace."""
    out: set[int] = set()
    try:
        if os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino:
            return out  # the host's mounts are not a run's
        with open(f"/proc/{pid}/mountinfo") as f:
            for line in f:
                fields = line.split(" ", 5)
                m = _NSFS_ROOT.match(fields[3])
                if m and fields[4].startswith(MOUNT_DIR + "/"):
                    out.add(int(m.group(1)))
    except (OSError, IndexError):
        pass
    return out


def _state_inodes(run_id: str | None) -> set[int]:
    """Namespace inodes recorded in state files: found even after every shell has died."""
    out: set[int] = set()
    if not STATE_DIR.is_dir():
        return out
    for p in STATE_DIR.glob(f"{run_id}.json" if run_id else "*.json"):
        try:
            out |= {int(i) for i in json.loads(p.read_text()).get("netns_inodes", [])}
        except (OSError, ValueError, TypeError, AttributeError):
            log.warning("unreadable state file %s", p)
    return out


def kill_and_wait(pids: set[int], timeout_s: float = 10.0) -> list[int]:
    """SIGKILL ``pids``, reap those that are our children, wait until all are gone.

    Returns the pids still alive after ``timeout_s``.
    """
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    alive = set(pids)
    while alive:
        for pid in list(alive):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            try:
                with open(f"/proc/{pid}/stat") as f:
                    zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
            except OSError:
                zombie = True  # gone
            if zombie:
                alive.discard(pid)
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return sorted(alive)


def _of_run(name: str, stem: str, sep: str) -> bool:
    """Whether ``name`` is ``stem`` or ``stem`` + ``sep`` + more: the files of run ``x`` are ``x.json`` and
    ``x/``, never those of run ``x2``."""
    return name == stem or name.startswith(stem + sep)


def clean(run_id: str | None = None) -> CleanReport:
    """Kill the processes and remove the namespaces and state files of run ``run_id`` (all runs if None).

    Raises
    ------
    ValueError
        ``run_id`` is not a valid run id.
    """
    if run_id is not None and not RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r} must match {RUN_ID_RE.pattern}")
    report = CleanReport()
    pids, inodes = find_ours(run_id)
    groups = run_roots(run_id)
    pids |= tasks_in(groups) - _protected()  # a compute node's service is ours wherever it is
    report.namespaces = len(inodes)
    report.remaining = kill_and_wait(pids)
    report.killed = sorted(pids - set(report.remaining))
    if NETNS_DIR.is_dir():
        for p in sorted(NETNS_DIR.glob(f"{MARK}-{run_id}*" if run_id else f"{MARK}-*")):
            subprocess.run(["ip", "netns", "delete", p.name], check=False, capture_output=True)
            report.netns_removed.append(p.name)
    if STATE_DIR.is_dir():
        for p in sorted(STATE_DIR.glob(f"{run_id}*" if run_id else "*")):
            if run_id and not _of_run(p.name, run_id, "."):
                continue
            if p.is_file():
                p.unlink(missing_ok=True)
                report.state_files_removed.append(str(p))
            elif p.is_dir() and not p.is_symlink() and RUN_ID_RE.fullmatch(p.name):
                shutil.rmtree(p, ignore_errors=True)
                report.state_files_removed.append(str(p) + "/")
    # what a cluster agent keeps in the temporary folder while it plays (its flows' files, its monitor rows),
    # left there if it was killed: satnetem-<run id>-flows-* and satnetem-<run id>-monitor-*
    for kind in ("flows", "monitor"):
        for p in sorted(Path(tempfile.gettempdir()).glob(f"{MARK}-{run_id or '*'}-{kind}-*")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif p.is_file() or p.is_symlink():
                p.unlink(missing_ok=True)
            else:
                continue
            report.state_files_removed.append(str(p))
    cg_left = remove_tree(groups)
    report.cgroups_removed = [str(g) for g in groups if str(g) not in cg_left]
    # a namespace lives on while any process is in it: check none is
    if inodes:
        left = [pid for pid, _, ino in _processes() if ino in inodes and pid not in _protected()]
        report.remaining = sorted(set(report.remaining) | set(left))
    if report.killed or report.netns_removed:
        # the kernel of the development VM keeps namespaces nothing refers to until a new one is made
        # (emulator.kernel.memory): make and drop one, so that what was removed is freed
        from .kernel.memory import release_dead_namespaces

        why = release_dead_namespaces()
        if why:
            log.info("clean: could not ask the kernel to free dead namespaces: %s", why)
    if report.killed:
        log.info("clean: killed %d processes in %d namespaces", len(report.killed), report.namespaces)
    if report.remaining:
        log.warning("clean: processes still alive after SIGKILL: %s", report.remaining)
    return report
