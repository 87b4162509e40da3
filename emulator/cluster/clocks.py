"""Clock offset of another host from round trips, as NTP estimates it (RFC 5905's on-wire offset).

Every host of a clustered run applies step k at start + k x step_s by its own clock, so their clocks must
agree to well within a step. Before the run the head asks each host's agent for its clock several times;
each exchange gives the head's send time t0, the host's clock t1 when it answered and the head's receive
time t2. Then ``t1 - (t0 + t2) / 2`` is the host's offset if the request and the answer took equally long,
and it is wrong by at most half the round trip ``t2 - t0`` whatever the asymmetry: the exchange with the
shortest round trip bounds it most tightly, and is the one kept (:func:`offset`).

Pure: numbers in, numbers out. Where the samples come from (a Ray actor's ``time.time_ns()``,
:mod:`emulator.cluster.raylab`) is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from topologies.errors import ConfigError


@dataclass(frozen=True)
class ClockOffset:
    """A host's clock against ours.

    Attributes
    ----------
    offset_ms : float
        Their clock minus ours, ms (positive: theirs is ahead).
    bound_ms : float
        The true offset is within ``offset_ms +- bound_ms`` (half the shortest round trip), ms.
    samples : int
        Exchanges used.
    """

    offset_ms: float
    bound_ms: float
    samples: int

    def exceeds(self, limit_ms: float) -> bool:
        """Whether the offset is beyond ``limit_ms`` even at the bound's most favourable end (refuse then)."""
        return abs(self.offset_ms) - self.bound_ms > limit_ms


def offset(t_send_ns: np.ndarray, t_remote_ns: np.ndarray, t_recv_ns: np.ndarray) -> ClockOffset:
    """The offset of the remote clock from exchanges (ours at send, theirs at answer, ours at receipt), ns.

    Raises
    ------
    ConfigError
        No exchange, arrays of different lengths, or an answer received before it was sent.
    """
    t0 = np.asarray(t_send_ns, np.int64)
    t1 = np.asarray(t_remote_ns, np.int64)
    t2 = np.asarray(t_recv_ns, np.int64)
    if not (t0.shape == t1.shape == t2.shape) or t0.ndim != 1 or len(t0) == 0:
        raise ConfigError(f"clock samples must be three 1-D arrays of one length >= 1, got shapes "
                          f"{t0.shape}, {t1.shape}, {t2.shape}", key="clock samples")
    rtt = t2 - t0
    if (rtt < 0).any():
        raise ConfigError(f"a clock sample was received before it was sent (sample {int(np.argmax(rtt < 0))})",
                          key="clock samples")
    k = int(np.argmin(rtt))
    # t1 - (t0 + t2) / 2 as (t1 - t0) - rtt / 2: differences of nanoseconds since 1970 stay exact in int64,
    # where the times themselves (~1.8e18) lose ~200 ns in a float64
    return ClockOffset(float(int(t1[k] - t0[k]) - int(rtt[k]) / 2) / 1e6, float(rtt[k]) / 2e6, len(t0))
