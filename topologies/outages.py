"""Link availability over time that is not geometry: pointing/acquisition delays and random outages.

Both functions work on whole ``(n_links, n_steps)`` masks at once; nothing here knows about orbits.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError

#: Relative slack when turning a duration into whole steps, so that 3.0 s / 1.0 s is 3 steps and not 4
#: because of floating-point noise.
_STEP_EPS = 1e-9


def steps_for(duration_s: float, step_s: float) -> int:
    """Number of whole steps that cover ``duration_s``: ``ceil(duration_s / step_s)``.

    Parameters
    ----------
    duration_s : float
        Duration, s (>= 0).
    step_s : float
        Step length, s (> 0).

    Examples
    --------
    >>> steps_for(2.0, 1.0), steps_for(2.5, 1.0), steps_for(0.0, 1.0)
    (2, 3, 0)
    """
    if step_s <= 0:
        raise ConfigError(f"step_s must be > 0, got {step_s}", key="step_s")
    if duration_s < 0:
        raise ConfigError(f"duration must be >= 0 s, got {duration_s}")
    return math.ceil(duration_s / step_s - _STEP_EPS)


def apply_acquisition(available: np.ndarray, partner_changed: np.ndarray | None,
                      acquisition_steps: int, *, initially_acquired: bool = True) -> np.ndarray:
    """Steps at which a link is still acquiring its partner.

    A link that becomes available (was not at the previous step) or whose terminal gets a new partner
    at step ``k`` cannot carry traffic at steps ``k .. k + acquisition_steps - 1``; it is up from
    ``k + acquisition_steps`` if it stays available. An interruption during acquisition restarts it.

    Parameters
    ----------
    available : ndarray, (n_links, n_steps) bool
        The link could carry traffic at that step if its terminals were pointed.
    partner_changed : ndarray, (n_links, n_steps) bool, or None
        The terminal points at a different partner from this step on (a gateway handover). None means
        never.
    acquisition_steps : int
        Steps a (re)acquisition lasts (>= 0); see :func:`steps_for`.
    initially_acquired : bool
        Links available at step 0 are taken as already pointed (the run starts in steady state). With
        False they acquire from step 0 too.

    Returns
    -------
    ndarray, (n_links, n_steps) bool
        True where the link is available but still acquiring (its state is ``Reason.ACQUIRING``).
    """
    available = np.asarray(available, dtype=bool)
    if available.ndim != 2:
        raise ValueError(f"available must be (n_links, n_steps), got shape {available.shape}")
    if acquisition_steps < 0:
        raise ConfigError(f"acquisition_steps must be >= 0, got {acquisition_steps}")
    n, t = available.shape
    if acquisition_steps == 0 or n == 0 or t == 0:
        return np.zeros((n, t), dtype=bool)
    previous = np.empty_like(available)
    previous[:, 1:] = available[:, :-1]
    previous[:, 0] = initially_acquired
    start = available & ~previous
    if partner_changed is not None:
        partner_changed = np.asarray(partner_changed, dtype=bool)
        if partner_changed.shape != available.shape:
            raise ValueError(f"partner_changed has shape {partner_changed.shape}, "
                             f"expected {available.shape}")
        start |= available & partner_changed
    # index of the most recent acquisition start at or before each step (-big if none)
    idx = np.arange(t, dtype=np.int64)
    last = np.where(start, idx, -(acquisition_steps + 1))
    np.maximum.accumulate(last, axis=1, out=last)
    return available & (idx - last < acquisition_steps)


def pointing_outages(n_links: int, n_steps: int, step_s: float, mtbf_s: float | None,
                     mean_duration_s: float, seed: int) -> np.ndarray:
    """Random pointing outages: an alternating renewal process per link, sampled at every step.

    Each link is up for an exponentially distributed time (mean ``mtbf_s``, counted from the end of
    the previous outage; the first interval starts at time 0), then down for an exponentially
    distributed time (mean ``mean_duration_s``), and so on. Step ``k`` (time ``k * step_s``) is in an
    outage when it falls in ``[start, end)`` of one. An outage shorter than a step may fall between two
    samples and then is not seen at all. Links are independent; the same ``seed`` gives the same
    outages (numpy ``default_rng``), another seed gives others.

    The re-acquisition after an outage is not part of this mask; feed ``available & ~outage`` to
    :func:`apply_acquisition`.

    Parameters
    ----------
    n_links, n_steps : int
        Shape of the result.
    step_s : float
        Step length, s.
    mtbf_s : float or None
        Mean time between failures (up time between outages), s. None or ``inf``: no outages.
    mean_duration_s : float
        Mean outage duration, s (> 0).
    seed : int
        Seed of the random generator.

    Returns
    -------
    ndarray, (n_links, n_steps) bool
        True where the link is in a random outage.
    """
    out = np.zeros((n_links, n_steps), dtype=bool)
    if mtbf_s is None or math.isinf(mtbf_s) or n_links == 0 or n_steps == 0:
        return out
    if mtbf_s <= 0:
        raise ConfigError(f"outage_mtbf_s must be > 0 s or None, got {mtbf_s}", key="outage_mtbf_s")
    if mean_duration_s <= 0:
        raise ConfigError(f"outage_mean_duration_s must be > 0 s, got {mean_duration_s}",
                          key="outage_mean_duration_s")
    if step_s <= 0:
        raise ConfigError(f"step_s must be > 0, got {step_s}", key="step_s")
    horizon_s = n_steps * step_s
    rng = np.random.default_rng(seed)
    cycle_s = mtbf_s + mean_duration_s
    # enough cycles for nearly every link; the rare link that needs more is topped up below
    k = int(horizon_s / cycle_s + 6.0 * math.sqrt(horizon_s / cycle_s + 1.0) + 4)
    up = rng.exponential(mtbf_s, size=(n_links, k))
    down = rng.exponential(mean_duration_s, size=(n_links, k))
    ends = np.cumsum(up + down, axis=1)
    while True:
        short = ends[:, -1] < horizon_s
        if not short.any():
            break
        more_up = rng.exponential(mtbf_s, size=(n_links, k))
        more_down = rng.exponential(mean_duration_s, size=(n_links, k))
        up = np.concatenate([up, more_up], axis=1)
        down = np.concatenate([down, more_down], axis=1)
        ends = np.cumsum(up + down, axis=1)
    starts = ends - down
    # outage [s, e) covers steps ceil(s/step) .. ceil(e/step) - 1; mark with a difference array
    first = np.clip(np.ceil(starts / step_s - _STEP_EPS), 0, n_steps).astype(np.int64)
    stop = np.clip(np.ceil(ends / step_s - _STEP_EPS), 0, n_steps).astype(np.int64)
    marks = np.zeros((n_links, n_steps + 1), dtype=np.int32)
    rows = np.broadcast_to(np.arange(n_links)[:, None], first.shape)
    np.add.at(marks, (rows, first), 1)
    np.add.at(marks, (rows, stop), -1)
    out = np.cumsum(marks, axis=1)[:, :n_steps] > 0
    return out
