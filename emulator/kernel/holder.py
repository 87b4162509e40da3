"""What holds the emulation's network namespaces: one small process per run, not one shell per node.

The holder (``python -m emulator.kernel.holder``, started by :class:`Holder`) lives in a mount namespace
of its own whose mounts are private (nothing propagates to or from the host). On a fresh tmpfs at
:data:`MOUNT_DIR` it creates each node's network namespace the way ``ip netns add`` does, without forking:
``unshare(CLONE_NEWNET)``, then a bind mount of ``/proc/self/ns/net`` onto the file ``MOUNT_DIR/<node>``.
The bind mount is what holds the namespace. Other processes reach it as
``/proc/<holder pid>/root/run/satnetem-netns/<node>`` (:meth:`Holder.path`): open it for setns(2), pass it
to ``nsenter --net=``, hand it to a shaping daemon as a string.

Why there and not in the host's mount namespace: every reader of the host's ``/proc/self/mountinfo``
(systemd, findmnt, ``ip netns``, every ``mount``) would walk 10^4 more lines; the holder's mounts are
visible only in the holder's ``/proc/<pid>/mountinfo``. Why not one process per node: a process costs a
pid, a pty (bash) and ~1 MB; the kernel allows 4,096 ptys.

Lifetime: the holder exits when its standard input reaches end of file (the runner died or closed it)
and, when started from the runner's main thread, on the runner's death (PR_SET_PDEATHSIG). Its mount
namespace dies with it, the bind mounts with that, and each network namespace goes with its last
reference (a process still running inside one keeps it alive until ``satnetem clean`` kills it).

The holder also writes each new namespace's sysctls while it is inside (no setns round trip later), those
a new namespace does not already start with.

Costs, measured on this machine (kernel 6.18, 2 cores, shared): a namespace is created in 1.0-3.3 ms
(unshare, bind mount and 5 sysctls; the kernel's namespace setup is the bulk, and threads do not speed it
up: 4 threads took 4.0 ms per namespace against 3.3 for one, measured side by side), a bind mount alone in
84 us. Reading a mountinfo with 10^4 bind mounts takes 65 ms against 0.16 ms for this host's 20 mounts:
what every reader of the host's would pay if the mounts were there. Memory per namespace and per veth:
:mod:`emulator.kernel.budget`.

Protocol on stdin/stdout, one JSON line each way::

    {"op": "create", "names": [...], "profiles": [{"net/ipv4/conf/all/rp_filter": "0"}, ...],
     "profile": [0, 1, ...]}        -> {"ok": true, "inodes": [...]}   (profile: index per name, or absent)
    {"op": "close"}                 -> exit 0 (so does end of file)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Where the holder mounts its tmpfs (in its own mount namespace). On the host it stays an empty directory.
MOUNT_DIR = "/run/satnetem-netns"
#: Process argument that marks a run's holder: ``satnetem:<run_id>:`` + this (see :mod:`emulator.clean`).
HOLDER_TAG = "@netns-holder"
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
#: Namespaces created per request to the holder.
CREATE_CHUNK = 512
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1


class HolderError(OSError):
    """The holder refused a request or died (the message says which and why)."""


# ----------------------------------------------------------------------------- the holder process
def _libc() -> Any:
    try:  # find_library forks ldconfig (~150 ms): try the usual name first
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _make_private(libc: Any) -> None:
    """Stop mount propagation between the holder's mount namespace and the host's."""
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0:
        return
    # In a chroot "/" need not be a mount point: make each mount we can see private instead.
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for p in points:
        libc.mount(None, p.encode(), None, MS_PRIVATE, None)  # best effort: unreadable ones are not ours


def _drop_copied_netns(libc: Any) -> None:
    """Unmount the copies of the host's ``ip netns`` mounts that unshare(CLONE_NEWNS) gave the holder:
    they would keep other users' namespaces alive after ``ip netns delete`` until the holder exits."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if " - nsfs " in line]
    for p in reversed(points):
        libc.umount2(p.encode(), MNT_DETACH)


def _serve(run_id: str, parent: int) -> int:
    libc = _libc()
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if parent > 0:
        libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        if os.getppid() != parent:  # the runner died before the death signal was armed
            return 1
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _make_private(libc)
    _drop_copied_netns(libc)
    os.makedirs(MOUNT_DIR, mode=0o700, exist_ok=True)
    _check(libc.mount(b"satnetem-netns", MOUNT_DIR.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      b"mode=0700"), f"mount tmpfs on {MOUNT_DIR}")
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    out = sys.stdout
    for line in sys.stdin:
        try:
            req = json.loads(line)
        except ValueError:
            out.write(json.dumps({"ok": False, "error": f"bad request {line[:80]!r}"}) + "\n")
            out.flush()
            continue
        if req.get("op") == "close":
            return 0
        try:
            if req.get("op") != "create":
                raise ValueError(f"unknown op {req.get('op')!r}")
            reply: dict[str, Any] = {"ok": True, "inodes": _create(libc, home, req)}
        except (OSError, ValueError, TypeError, KeyError, IndexError) as e:
            reply = {"ok": False, "error": str(e)}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


#: sysctl -> the value a new namespace starts with, read in the first one made (all start alike: from the
#: kernel's defaults or the host's, as net.core.devconf_inherit_init_net says). A key already at the value
#: asked for is not written: every /proc/sys lookup compares the name against every namespace made so far.
_FRESH: dict[str, str] = {}


def _needs_write(key: str, value: str) -> bool:
    if key not in _FRESH:
        try:
            with open(f"/proc/sys/{key}") as f:
                _FRESH[key] = f.read().strip()
        except OSError:
            _FRESH[key] = ""  # the write below reports why
    return _FRESH[key] != value


#: A private procfs instance the holder writes sysctls through, mounted afresh every :data:`PROC_EVERY`
#: namespaces that need a write. Why: every namespace that has looked up ``/proc/sys/net/ipv4`` leaves a
#: dentry of that name under the one shared ``/proc/sys/net``, and each later lookup compares the name
#: against all of them, so one write per namespace costs O(namespaces) and a run O(namespaces^2)
#: (net/ipv4/icmp_ratelimit in each of 4,400 namespaces: 7.5 s against 1.9 s with none, bench/bench_netns.py).
#: A procfs mount has its own dentries, and unmounting it drops them: chains stay under PROC_EVERY long.
PROC_DIR = f"{MOUNT_DIR}/.proc"
PROC_EVERY = 64


class _SysctlWriter:
    """Writes sysctls of the calling thread's current network namespace through :data:`PROC_DIR`."""

    def __init__(self, libc: Any) -> None:
        self.libc = libc
        self.mounted = False
        self.uses = 0

    def write(self, key: str, value: str) -> None:
        if self.uses >= PROC_EVERY:
            self.close()
        if not self.mounted:
            os.makedirs(PROC_DIR, mode=0o700, exist_ok=True)
            _check(self.libc.mount(b"proc", PROC_DIR.encode(), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
                   f"mount proc on {PROC_DIR}")
            self.mounted, self.uses = True, 0
        self.uses += 1
        with open(f"{PROC_DIR}/sys/{key}", "w") as f:
            f.write(value)

    def close(self) -> None:
        if self.mounted:
            self.libc.umount2(PROC_DIR.encode(), MNT_DETACH)
            self.mounted = False


def _create(libc: Any, home: int, req: dict[str, Any]) -> list[int]:
    names = req["names"]
    profiles = req.get("profiles") or [{}]
    which = req.get("profile") or [0] * len(names)
    for name in names:
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ValueError(f"namespace name {name!r} must match {NAME_RE.pattern}")
    inodes = []
    sysctl = _SysctlWriter(libc)
    try:
        for name, k in zip(names, which):
            target = f"{MOUNT_DIR}/{name}"
            fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
            os.close(fd)
            _check(libc.unshare(CLONE_NEWNET), f"unshare(CLONE_NEWNET) for {name}")
            _check(libc.mount(b"/proc/self/ns/net", target.encode(), None, MS_BIND, None),
                   f"bind mount of {name}'s namespace")
            inodes.append(os.stat(target).st_ino)
            for key, value in profiles[k].items():
                if not _needs_write(key, value):
                    continue
                try:
                    sysctl.write(key, value)
                except OSError as e:
                    raise OSError(e.errno, f"{name}: cannot set sysctl {key}={value}: {e.strerror}") from None
    finally:
        sysctl.close()
        _check(libc.setns(home, CLONE_NEWNET), "setns back to the holder's own namespace")
    return inodes


# ----------------------------------------------------------------------------- the runner's side
class Holder:
    """The runner's handle on its namespace holder (one per run).

    Parameters
    ----------
    run_id : str
        Marks the holder's command line (``satnetem:<run_id>:@netns-holder``) for ``satnetem clean``.
    reply_timeout_s : float
        Longest wait for one reply (:data:`CREATE_CHUNK` namespaces), s.
    """

    def __init__(self, run_id: str, reply_timeout_s: float = 300.0) -> None:
        self.run_id = run_id
        self.reply_timeout_s = reply_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self.names: list[str] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def poll(self) -> int | None:
        """The holder's exit status once it has ended (and the namespaces with it), else None."""
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> None:
        """Start the holder process and wait until it answers."""
        from emulator.nodes import mark

        main = threading.current_thread() is threading.main_thread()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH")) if p)
        # -S: no site-packages (the holder needs only the standard library): starts in ~20 ms
        argv = [sys.executable, "-S", "-m", "emulator.kernel.holder", "--parent", str(os.getpid() if main else 0),
                mark(self.run_id, HOLDER_TAG)]
        os.makedirs(MOUNT_DIR, mode=0o700, exist_ok=True)
        # Only the thread that forks it is the holder's "parent" for PR_SET_PDEATHSIG: armed only from the
        # main thread, whose end is the process's; from any other, end of file on stdin ends it.
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                      close_fds=True, cwd="/")
        self._call({"op": "create", "names": []})

    def path(self, name: str) -> str:
        """Path of node ``name``'s network namespace, openable by any process of the host (as root)."""
        if self._proc is None:
            raise HolderError(0, "the namespace holder is not running")
        return f"/proc/{self._proc.pid}/root{MOUNT_DIR}/{name}"

    def create(self, names: Sequence[str], profiles: Sequence[dict[str, str]] = ({},),
               profile: Sequence[int] | None = None) -> list[int]:
        """Create one network namespace per name (sysctls ``profiles[profile[i]]`` written in each);
        return their inode numbers.

        Raises
        ------
        HolderError
            A namespace could not be created (names it and says why); those created before stay.
        """
        names = list(names)
        which = list(profile) if profile is not None else [0] * len(names)
        inodes: list[int] = []
        # in chunks: each reply comes within the timeout even when the kernel is slow (under another
        # run's teardown, creation was measured at up to 110 ms per namespace), and progress is logged
        for lo in range(0, len(names), CREATE_CHUNK):
            reply = self._call({"op": "create", "names": names[lo:lo + CREATE_CHUNK], "profiles": list(profiles),
                                "profile": which[lo:lo + CREATE_CHUNK]})
            self.names += names[lo:lo + CREATE_CHUNK]
            inodes += [int(i) for i in reply["inodes"]]
            log.info("namespaces: %d of %d created", len(inodes), len(names))
        return inodes

    def _call(self, req: dict[str, Any]) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise HolderError(0, "the namespace holder is not running")
        try:
            proc.stdin.write(json.dumps(req).encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            raise HolderError(0, f"the namespace holder died (exit {proc.wait()})") from None
        poller = select.poll()
        poller.register(proc.stdout, select.POLLIN)
        if not poller.poll(self.reply_timeout_s * 1000):
            raise HolderError(0, f"the namespace holder did not answer in {self.reply_timeout_s:g} s")
        line = proc.stdout.readline()
        if not line:
            raise HolderError(0, f"the namespace holder died (exit {proc.wait()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise HolderError(0, reply.get("error", "unknown error"))
        return reply

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the holder: its namespaces go with their last reference. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.close()  # end of file: the holder exits
        except (BrokenPipeError, OSError):
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("namespace holder %d did not exit; killing it", proc.pid)
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m emulator.kernel.holder", description=__doc__.split("\n")[0])
    p.add_argument("--parent", type=int, default=0, help="die with this pid (PR_SET_PDEATHSIG); 0: no")
    p.add_argument("mark", help="satnetem:<run_id>:@netns-holder, for satnetem clean")
    args = p.parse_args(argv)
    try:
        return _serve(args.mark, args.parent)
    except OSError as e:
        print(json.dumps({"ok": False, "error": str(e)}), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
