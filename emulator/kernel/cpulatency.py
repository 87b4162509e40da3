"""Keep the CPUs out of deep idle states while an emulation runs (the kernel's PM QoS CPU latency request).

Why: a packet held by the delay daemon is released by a timer; when the CPU that timer wakes is idle, the
wake-up costs what the idle state takes to leave. On a virtual machine, leaving ``HLT`` means the hypervisor
has to run the virtual CPU again, and on the 2-core development VM that took milliseconds: a SCHED_FIFO
thread sleeping 1 ms at a time (nothing else running) woke more than 1 ms late 1.4-5.5 % of the time (p99
1.2-4.3 ms, 4 runs of 6 s); with this request held, 0.2-1.3 % (p99 0.11-1.6 ms, 4 runs alternated with
those). ``satnetem run examples/campaign.toml --duration 30``: the daemon's release lateness p99 0.35-2.8 ms
held, 1.2-3.5 ms not (3 runs each, alternated).

How: writing a 32-bit 0 to ``/dev/cpu_dma_latency`` asks every CPU's idle governor for states with no exit
latency (polling) for as long as the file stays open; closing it, or the process's death however it comes,
withdraws the request (the kernel keeps it per open file). Nothing on the host is changed beyond that, and
nothing is left behind. The cost is power, and on a VM host CPU time: idle virtual CPUs poll instead of
halting. ``[emulation] keep_cpus_awake = false`` turns it off for a run, ``SATNETEM_KEEP_CPUS_AWAKE=0`` in the
environment for every run there (a TCG-emulated VM, where a polling idle vCPU is a host thread spinning).

Who holds it: the delay daemon's driver while its shards run (emulator.shaping.delayd.DelayDaemon), whoever
uses it, and an Emulation from build to stop (for the netem backend's kernel timers too). Two holders are two
open files; the kernel keeps the strictest request.
"""

from __future__ import annotations

import logging
import os
import struct

log = logging.getLogger(__name__)

DEVICE = "/dev/cpu_dma_latency"
#: Environment variable that, set to 0, keeps every holder in that environment from making the request.
KEEP_AWAKE_ENV = "SATNETEM_KEEP_CPUS_AWAKE"


class CpuLatencyHold:
    """The request, held from :meth:`hold` to :meth:`release` (or the process's exit).

    Parameters
    ----------
    latency_us : int
        Largest idle-state exit latency allowed, us (0: polling only).
    """

    def __init__(self, latency_us: int = 0) -> None:
        if isinstance(latency_us, bool) or not isinstance(latency_us, int) or not 0 <= latency_us <= 2_000_000_000:
            raise ValueError(f"latency_us must be an integer in [0, 2000000000], got {latency_us!r}")
        self.latency_us = latency_us
        self._fd: int | None = None
        self.why_not = ""  # why the request is not held (empty while it is, or before hold())

    @property
    def held(self) -> bool:
        return self._fd is not None

    def hold(self) -> bool:
        """Make the request; True when held. Without the device or the right to open it (not root, a
        container) the run goes on without it: :attr:`why_not` says why, and a warning names the device. With
        :data:`KEEP_AWAKE_ENV` set to 0 it is not made (:attr:`why_not` says so, no warning)."""
        if self._fd is not None:
            return True
        if os.environ.get(KEEP_AWAKE_ENV, "1") == "0":
            self.why_not = f"{KEEP_AWAKE_ENV}=0 in the environment"
            return False
        try:
            fd = os.open(DEVICE, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            self.why_not = f"cannot open {DEVICE}: {e.strerror}"
            log.warning("CPU idle states not held (timer wake-ups may be late): %s", self.why_not)
            return False
        try:
            os.write(fd, struct.pack("=i", self.latency_us))
        except OSError as e:
            os.close(fd)
            self.why_not = f"cannot write {DEVICE}: {e.strerror}"
            log.warning("CPU idle states not held (timer wake-ups may be late): %s", self.why_not)
            return False
        self._fd = fd
        self.why_not = ""
        return True

    def release(self) -> None:
        """Withdraw the request. Idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
