"""The underlay's own delay between hosts, measured with ping, for subtracting from the emulated delay of
cross-host links.

A cross-host link's packets cross the physical network between the two hosts, which adds its delay to
the one the link's ends are shaped with. That delay is taken as half the *minimum* RTT over a burst of
pings (queueing only ever adds to an RTT, so its minimum is the path's own; halving assumes the two
directions alike, as the peers that correct for it do); the spread above it (p95 - min) is printed as the
jitter the correction cannot remove. :func:`corrected_delay_ms` subtracts it from a link's delay and says
when the underlay alone is slower than the link should be.

``ping`` is started with an argument list (never a shell line), inside a given network namespace through
``nsenter`` when asked (a fake host of :mod:`emulator.cluster.lab`); one per target, all at once.
"""

from __future__ import annotations

import ipaddress
import math
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from topologies.errors import ApplyError, ConfigError

_TIME = re.compile(r"time=([\d.]+) ms")


@dataclass(frozen=True)
class UnderlayPath:
    """Pings from here to one host.

    Attributes
    ----------
    target : str
        The host's underlay IPv4 address.
    sent, received : int
    rtt_min_ms, rtt_median_ms, rtt_p95_ms : float
        RTT statistics, ms (NaN when nothing came back).
    """

    target: str
    sent: int
    received: int
    rtt_min_ms: float
    rtt_median_ms: float
    rtt_p95_ms: float

    @property
    def one_way_ms(self) -> float:
        """The underlay's one-way delay: half the minimum RTT, ms."""
        return self.rtt_min_ms / 2

    @property
    def jitter_ms(self) -> float:
        """p95 - min of the RTT, ms: what the correction leaves."""
        return self.rtt_p95_ms - self.rtt_min_ms

    def describe(self) -> str:
        return (f"{self.target}: one-way {self.one_way_ms:.3f} ms (min RTT {self.rtt_min_ms:.3f}, median "
                f"{self.rtt_median_ms:.3f}, jitter p95-min {self.jitter_ms:.3f} ms), {self.received}/{self.sent} "
                f"answered")


def measure(targets: Sequence[str], count: int = 20, interval_s: float = 0.01, netns: str | None = None,
            timeout_s: float = 30.0) -> list[UnderlayPath]:
    """Ping every target ``count`` times (all targets at once) and return one :class:`UnderlayPath` each.

    Parameters
    ----------
    targets : sequence of str
        IPv4 addresses.
    count : int
        Pings per target, 1 .. 10000.
    interval_s : float
        Between pings of one target, s (ping needs root below 0.2 s; >= 0.002).
    netns : str, optional
        Path of the network namespace to ping from (through ``nsenter``); None: this process's.

    Raises
    ------
    ConfigError
        A target that is not an IPv4 address, or a count or interval out of range.
    ApplyError
        ping could not be started or did not end in ``timeout_s``.
    """
    for t in targets:
        try:
            ipaddress.IPv4Address(t)
        except ValueError:
            raise ConfigError(f"underlay target {t!r} is not an IPv4 address", key="targets") from None
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10_000:
        raise ConfigError(f"count must be an integer in [1, 10000], got {count!r}", key="count")
    if not (isinstance(interval_s, (int, float)) and math.isfinite(interval_s) and interval_s >= 0.002):
        raise ConfigError(f"interval_s must be >= 0.002 s, got {interval_s!r}", key="interval_s")
    prefix = ["nsenter", f"--net={netns}", "--"] if netns is not None else []
    procs = []
    try:
        for t in targets:
            argv = [*prefix, "ping", "-n", "-c", str(count), "-i", f"{interval_s:g}", "-W", "2", t]
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        out = []
        for t, p in zip(targets, procs):
            stdout, _ = p.communicate(timeout=timeout_s)
            rtt = np.array([float(x) for x in _TIME.findall(stdout)], np.float64)
            if len(rtt):
                out.append(UnderlayPath(t, count, len(rtt), float(rtt.min()), float(np.median(rtt)),
                                        float(np.percentile(rtt, 95))))
            else:
                out.append(UnderlayPath(t, count, 0, math.nan, math.nan, math.nan))
        return out
    except OSError as e:
        raise ApplyError(f"cannot run ping: {e.strerror or e}", operation="underlay delay") from None
    except subprocess.TimeoutExpired:
        raise ApplyError(f"ping did not end in {timeout_s:g} s", operation="underlay delay") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def corrected_delay_ms(link_delay_ms: np.ndarray, one_way_ms: float) -> tuple[np.ndarray, np.ndarray]:
    """The delay to shape a cross-host link with so that with the underlay's ``one_way_ms`` it adds up to
    ``link_delay_ms`` (per link or per link and step, any shape), never below 0; and where the underlay alone
    exceeds the link's delay (those links come out slower than planned: warn).

    Returns
    -------
    (delay_ms, too_slow) : (np.ndarray, np.ndarray of bool), the shape of ``link_delay_ms``
    """
    if not (math.isfinite(one_way_ms) and one_way_ms >= 0):
        raise ConfigError(f"underlay one-way delay must be a finite number >= 0 ms, got {one_way_ms!r}",
                          key="one_way_ms")
    d = np.asarray(link_delay_ms, np.float64)
    return np.maximum(d - one_way_ms, 0.0), d < one_way_ms
