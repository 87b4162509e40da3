"""Bounds that a scenario and the shaping backends must agree on, kept in one place.

``topologies`` checks scenario values against them when a scenario is loaded (so ``plan`` rejects what a
run could not build), and ``emulator.shaping`` checks the shapes it is handed against the same numbers.
"""

from __future__ import annotations

from .errors import ConfigError

#: Slowest link rate, Mbit/s (125 bytes/s). Kernel rates are whole bytes per second, so a slower rate would
#: be rounded by more than 0.4 %; and the token bucket of the shapers (at least 10 full frames deep) must
#: fit its depth in time into a u32 of 64 ns ticks: 15,140 B at 125 B/s is 1.9e9 ticks, below 2**32.
LINK_RATE_MIN_MBPS = 0.001
#: Fastest link rate of the userspace backend, Mbit/s: its tbf sends 64-bit rates (TCA_TBF_RATE64); 1 Tbit/s
#: is a sanity bound, not a kernel limit.
USERSPACE_MAX_RATE_MBPS = 1_000_000.0
#: Fastest link rate of the netem backend, Mbit/s: its htb class sends 64-bit rates too (TCA_HTB_RATE64).
NETEM_MAX_RATE_MBPS = USERSPACE_MAX_RATE_MBPS
#: Shaper name -> its fastest rate. ``auto`` picks netem where the kernel has it, so it gets netem's bound.
MAX_RATE_MBPS = {"netem": NETEM_MAX_RATE_MBPS, "auto": NETEM_MAX_RATE_MBPS, "userspace": USERSPACE_MAX_RATE_MBPS}


def max_rate_mbps(shaper: str) -> float:
    """The fastest link rate, Mbit/s, that shaper ``shaper`` (auto, netem, userspace) can set.

    Raises
    ------
    ConfigError
        ``shaper`` is not a known backend (the message lists them).
    """
    if shaper not in MAX_RATE_MBPS:
        raise ConfigError(f"unknown shaper {shaper!r}; known: {', '.join(MAX_RATE_MBPS)}", key="shaper")
    return MAX_RATE_MBPS[shaper]
