"""Link shaping backends: delay, rate and loss of each emulated link direction.

``make_shaper("auto")`` picks ``netem`` when the kernel has sch_netem and otherwise ``userspace`` (tbf for
rate, the compiled delay daemon for delay and loss). Both implement :class:`~emulator.shaping.base.Shaper`. The
rate is always shaped on the sending interface's egress; netem delays there too, while the userspace
backend holds a port's packets where they arrive at ``Port.peer`` when the port names it (fast TCP).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading

from emulator.shaping.base import LinkShape, Port, Shaper
from topologies.errors import ConfigError

log = logging.getLogger(__name__)

KINDS = ("auto", "netem", "userspace")
CLONE_NEWNET = 0x40000000

__all__ = ["KINDS", "LinkShape", "Port", "Shaper", "make_shaper", "probe_netem"]


def probe_netem() -> tuple[bool, str]:
    """Try to add a netem qdisc on ``lo`` of a throw-away network namespace.

    The namespace is made with unshare(2) in a short-lived thread (the caller's threads never move) and
    disappears when the probe's netlink socket is closed. Nothing is left behind.

    Returns
    -------
    (available, detail) : tuple[bool, str]
        ``detail`` is the kernel's answer, for the reason line.
    """
    result: list[tuple[bool, str]] = []

    def probe() -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        from emulator.netns import setns

        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                result.append((False, f"unshare(CLONE_NEWNET): {os.strerror(err)}"))
                return
            try:
                ipr = IPRoute()
            finally:
                setns(own)
            try:
                ipr.tc("add", "netem", 1, 0x10000, delay=1000)
                ipr.tc("del", "netem", 1, 0x10000)
                result.append((True, "netem qdisc added and removed in a scratch namespace"))
            except (NetlinkError, OSError) as e:  # (2, 'No such file or directory') when sch_netem is absent
                result.append((False, f"adding a netem qdisc failed: {e}"))
            finally:
                ipr.close()
        finally:
            os.close(own)

    t = threading.Thread(target=probe, name="netem-probe")
    t.start()
    t.join()
    return result[0] if result else (False, "probe thread failed")


def make_shaper(kind: str = "auto", seed: int = 0, keep_cpus_awake: bool = True,
                carry: bool = True) -> tuple[Shaper, str]:
    """Build the shaping backend ``kind`` (auto | netem | userspace).

    ``seed`` (the scenario's) fixes which packets the userspace backend's random loss drops; netem draws
    its losses from the kernel's generator, which cannot be seeded. ``keep_cpus_awake``: the userspace
    backend's daemon holds the CPU latency request while it runs (``[emulation] keep_cpus_awake``);
    ``carry``: it makes up a late release at the packet's next hold (``[emulation] carry_lateness``).

    Returns
    -------
    (shaper, reason) : tuple[Shaper, str]
        ``reason`` is one line saying which backend and why.

    Raises
    ------
    ConfigError
        ``kind`` is unknown (the message lists the known ones).
    """
    from emulator.shaping.netem import NetemShaper
    from emulator.shaping.userspace import UserspaceShaper

    if kind not in KINDS:
        raise ConfigError(f"unknown shaper {kind!r}; known: {', '.join(KINDS)}", key="shaper")
    if kind == "netem":
        return NetemShaper(), "netem: requested"
    if kind == "userspace":
        return UserspaceShaper(seed, keep_cpus_awake=keep_cpus_awake, carry=carry), "userspace: requested"
    ok, detail = probe_netem()
    if ok:
        return NetemShaper(), "netem: sch_netem available"
    why = f"userspace: kernel has no sch_netem (probe: {detail})"
    return UserspaceShaper(seed, keep_cpus_awake=keep_cpus_awake, carry=carry), why
