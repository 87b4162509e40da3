"""What a run costs the machine's memory, and when the kernel has freed its namespaces again.

The figures ``satnetem run`` prints: the fall of ``MemAvailable`` from before the build to its lowest while
the run plays, the growth of the kernel's ``Slab`` meanwhile (namespaces, devices, routes and sockets are
kernel memory, which no process's PSS shows), and the PSS of the run's processes (the run's own and every
descendant: delay daemon shards, route worker, namespace holder, traffic). After the teardown the kernel
frees the namespaces; :func:`net_namespaces` counts them (``/proc/slabinfo``, root only), so the run can say
when that count is back where it was before the build.

On this project's development kernel (6.18) the namespaces of a finished run stayed allocated, with
nothing referring to them, until some process made a new network namespace: 1,596 of them for 60 s and
10,948 for 3.5 min after their runs, each time gone within 2 s of an ``unshare --net``.
:func:`release_dead_namespaces` makes and drops one, so that the next run, and whatever else on the
machine walks the kernel's namespaces, does not meet them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from .budget import descendants


def meminfo_kb(*keys: str) -> dict[str, int]:
    """The given ``/proc/meminfo`` fields, kB ({} where unreadable)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, rest = line.partition(":")
                if k in keys:
                    out[k] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def net_namespaces() -> int | None:
    """Network namespaces the kernel holds now (active ``net_namespace`` objects of ``/proc/slabinfo``):
    the machine's, not only this run's. None where unreadable (not root, or no such cache)."""
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith("net_namespace "):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def pss_kb(pids: set[int] | None = None) -> int:
    """Summed PSS of this process and its descendants (or of ``pids``), kB; processes gone meanwhile or
    unreadable count 0."""
    total = 0
    for pid in pids if pids is not None else descendants() | {os.getpid()}:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            continue
    return total


def slab_slack() -> int:
    """How far the ``net_namespace`` count may stand above the namespaces alive: the allocator's count
    includes the objects of each CPU's cached slabs (40 made and dropped here left it 16 above where it
    started, and one namespace made later brought it below)."""
    return 64 * (os.cpu_count() or 1)


def release_dead_namespaces() -> str | None:
    """Make a network namespace and drop it at once (``unshare --net true``, a child process), which on
    the development kernel frees the namespaces that nothing refers to any more. None, or why not."""
    exe = shutil.which("unshare")
    if exe is None:
        return "unshare (util-linux) not found"
    try:
        r = subprocess.run([exe, "--net", "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if r.returncode == 0 else (r.stderr.decode(errors="replace").strip() or f"exit {r.returncode}")


def settle_net_namespaces(timeout_s: float = 10.0, quiet_s: float = 1.5, poll_s: float = 0.2) -> int | None:
    """The kernel's namespace count once dead ones are freed: asks the kernel to free them
    (:func:`release_dead_namespaces`), which it does in the background, then waits until the count has
    not fallen for ``quiet_s`` (or ``timeout_s`` passed). A count taken straight after the request still
    includes namespaces about to go (567 counted, then 400 made and only 826 seen: 141 freed meanwhile).
    None where unreadable."""
    release_dead_namespaces()
    t0 = time.monotonic()
    low = net_namespaces()
    if low is None:
        return None
    since = time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() - t0 < timeout_s:
        time.sleep(poll_s)
        n = net_namespaces()
        if n is None:
            return None
        if n < low:
            low, since = n, time.monotonic()
    return low


def wait_net_namespaces(baseline: int, timeout_s: float, poll_s: float = 0.2) -> tuple[float, int | None]:
    """Wait until the kernel's namespace count is back to ``baseline`` (within :func:`slab_slack`) or
    ``timeout_s`` passed, asking the kernel to free dead ones first and every second: (seconds waited,
    namespaces above the baseline then (0 within the slack), None when unreadable)."""
    t0 = time.monotonic()
    kicked = -1.0
    while True:
        if time.monotonic() - kicked >= 1.0:
            release_dead_namespaces()
            kicked = time.monotonic()
        n = net_namespaces()
        if n is None:
            return time.monotonic() - t0, None
        if n <= baseline + slab_slack() or time.monotonic() - t0 >= timeout_s:
            return time.monotonic() - t0, 0 if n <= baseline + slab_slack() else n - baseline
        time.sleep(poll_s)
