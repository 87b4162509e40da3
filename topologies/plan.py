"""From a scenario to a timeline: constellation, propagation, ISLs, gateways, user terminals, PoPs and fibre,
hosts, compute nodes."""

from __future__ import annotations

import dataclasses
import logging
import time as _time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .compute import expand_compute
from .constellation import Constellation, Shell
from .crossshell import cross_shell_links
from .errors import ConfigError
from .frames import ecef_to_geodetic
from .ground import GroundSite, builtin_cities, starlink_gateways
from .gsl import gsl_assign
from .isl import isl_states, plus_grid, usable_spare
from .pops import (
    BackhaulConfig,
    PoP,
    backbone_edges,
    country_shares,
    fibre_delay_ms,
    great_circle_km,
    home_pops,
    nearest,
    starlink_pops,
)
from .propagate import propagate
from .scenario import Scenario, check_traffic_endpoints
from .sunlight import sun_teme_km, sunlight_states, sunlight_summary
from .terminals import terminal_assign
from .timeline import LINK_CLASSES, LINK_ROLES, Node, Reason, Timeline

log = logging.getLogger(__name__)


def build_constellation(sc: Scenario) -> Constellation:
    """The satellites the scenario asks for: a preset, explicit Walker shells, or a TLE file."""
    from .walker import PRESETS, walker_constellation

    cc = sc.constellation
    if cc.tle:
        from .shells import constellation_from_tle
        from .tle import load_tle

        records = load_tle(sc.resolve(cc.tle))
        return constellation_from_tle(records, inclination_deg=cc.tle_inclination_deg,
                                      altitude_km=cc.tle_altitude_km, include_transient=cc.include_transient)
    if cc.shells:
        shells = [Shell(name=s.name, pattern=s.pattern, altitude_km=s.altitude_km,
                        inclination_deg=s.inclination_deg, planes=s.planes,
                        sats_per_plane=s.sats_per_plane, phasing=s.phasing, ltan_h=s.ltan_h,
                        raan_span_deg=s.raan_span_deg) for s in cc.shells]
        return walker_constellation(shells, sc.time.start)
    preset = cc.preset or "starlink-shell1"
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known presets: {', '.join(sorted(PRESETS))}",
                          file=sc.source, key="constellation.preset")
    return walker_constellation([PRESETS[preset]], sc.time.start)


def _meshed(n_sats: int, pairs: np.ndarray, state: np.ndarray, owner: np.ndarray, peer: np.ndarray,
            xstate: np.ndarray) -> np.ndarray:
    """(n_sats, n_t) bool: the satellite has at least one laser link (+Grid or cross-shell) up at the step."""
    n_t = state.shape[1]
    count = np.zeros((n_sats, n_t), np.int32)
    up = (state == Reason.UP).astype(np.int32)
    np.add.at(count, pairs[:, 0], up)
    np.add.at(count, pairs[:, 1], up)
    if len(owner):
        xup = xstate == Reason.UP
        np.add.at(count, owner, xup.astype(np.int32))
        k = np.broadcast_to(np.arange(n_t), xup.shape)
        np.add.at(count, (peer[xup], k[xup]), 1)
    return count > 0


def ground_sites(sc: Scenario) -> list[GroundSite]:
    """Gateways: Starlink's (``ground.gateways = "starlink"``), the first ``ground.cities`` built-in
    cities, then the scenario's own sites. The order is the order in which sites pick satellites under
    the per-satellite cap of gateway links (see :class:`topologies.gsl.GslConfig`)."""
    sites = starlink_gateways(sc.ground.gateway_antennas) if sc.ground.gateways == "starlink" else []
    sites += [GroundSite(name=f"gs-{s.name}", lat_deg=s.lat_deg, lon_deg=s.lon_deg, alt_m=s.alt_m,
                         antennas=s.antennas) for s in builtin_cities(sc.ground.cities)]
    sites += [GroundSite(name=s.name, lat_deg=s.lat_deg, lon_deg=s.lon_deg, alt_m=s.alt_m,
                         antennas=s.antennas) for s in sc.ground.sites]
    names = [s.name for s in sites]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"gateway name(s) used twice: {', '.join(sorted(dup))} (a [[ground.sites]] entry "
                          f"clashes with a built-in city or Starlink gateway)", file=sc.source, key="ground.sites")
    return sites


def terminal_sites(sc: Scenario) -> list[GroundSite]:
    """User terminals of the scenario as ground sites with one beam each (``[[terminals]]``)."""
    return [GroundSite(name=t.name, lat_deg=t.lat_deg, lon_deg=t.lon_deg, antennas=1) for t in sc.terminals]


@dataclass(frozen=True)
class Backhaul:
    """The PoPs of a scenario, each terminal's home PoP code, and the fibre links as
    (near node name, PoP node name, one-way delay ms, role) with role "backhaul" or "backbone"."""

    pops: list[PoP]
    home: dict[str, str]
    links: list[tuple[str, str, float, str]]
    config: BackhaulConfig


def backhaul(sc: Scenario, sites: list[GroundSite]) -> Backhaul | None:
    """PoPs, home PoPs and fibre of a scenario with ``[ground] pops`` (None without it): every gateway to
    its nearest PoP, the PoPs joined by :func:`topologies.pops.backbone_edges` (docs/model.md, "PoPs and
    backhaul").

    Raises
    ------
    ConfigError
        ``pops`` without any gateway; a terminal without a home PoP.
    """
    if not sc.ground.pops:
        return None
    if not sites:
        raise ConfigError("pops need gateways: no gateway would reach a PoP (set [ground] gateways, cities "
                          "or [[ground.sites]])", file=sc.source, key="ground.pops")
    cfg = sc.backhaul_config()
    pops = starlink_pops()
    home = home_pops([(t.name, t.country, t.pop) for t in sc.terminals], sc.seed, pops, country_shares())
    links: list[tuple[str, str, float, str]] = []
    near = nearest([s.lat_deg for s in sites], [s.lon_deg for s in sites], pops)
    for s, k in zip(sites, near.tolist()):
        d = great_circle_km(s.lat_deg, s.lon_deg, pops[k].lat_deg, pops[k].lon_deg)
        links.append((s.name, pops[k].node_name, float(fibre_delay_ms(d, cfg)), "backhaul"))
    for i, j in backbone_edges(pops, cfg.backbone_stretch).tolist():
        d = great_circle_km(pops[i].lat_deg, pops[i].lon_deg, pops[j].lat_deg, pops[j].lon_deg)
        links.append((pops[i].node_name, pops[j].node_name, float(fibre_delay_ms(d, cfg)), "backbone"))
    return Backhaul(pops, home, links, cfg)


def _pop_delay(sc: Scenario, n_sat: int, sites: list[GroundSite], gsl: Any, gsl_cfg: Any, pairs: np.ndarray,
               isl_state: np.ndarray, isl_delay: np.ndarray, xs: Any, bh: Backhaul | None) -> Any:
    """For the terminals' ``pop-delay`` policy: a function (terminal index, satellites) -> (n_t, n_cand) ms,
    the least delay from each satellite to that terminal's home PoP over lasers, gateway antennas and fibre
    (:func:`topologies.terminals.onward_delay_ms`)."""
    from .terminals import onward_delay_ms

    if bh is None:
        raise ConfigError("[terminal] policy 'pop-delay' needs PoPs: set [ground] pops = \"starlink\"",
                          file=sc.source, key="terminal.policy")
    n_t = isl_state.shape[1]
    node = {s.name: n_sat + i for i, s in enumerate(sites)} | {p.node_name: n_sat + len(sites) + j
                                                               for j, p in enumerate(bh.pops)}
    gw_delay = gsl.delay_ms.astype(np.float64) + np.where(gsl.peer >= 0, gsl_cfg.access_delay_ms, 0.0)
    fib_a = np.array([node[a] for a, _, _, _ in bh.links], np.int64)
    fib_b = np.array([node[b] for _, b, _, _ in bh.links], np.int64)
    fib_d = np.repeat(np.array([d for _, _, d, _ in bh.links], np.float64)[:, None], n_t, axis=1)
    edges = [(pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), isl_state == Reason.UP, isl_delay),
             (np.asarray(xs.owner, np.int64), np.asarray(xs.peer, np.int64), xs.state == Reason.UP, xs.delay_ms),
             (n_sat + np.asarray(gsl.site, np.int64), np.asarray(gsl.peer, np.int64), gsl.state == Reason.UP,
              gw_delay),
             (fib_a, fib_b, np.ones(fib_d.shape, bool), fib_d)]
    homes = sorted(set(bh.home.values()))
    table = onward_delay_ms(n_sat + len(sites) + len(bh.pops), edges,
                            np.array([node[f"pop-{c}"] for c in homes], np.int64), n_t, n_sat)
    row = [homes.index(bh.home[t.name]) for t in sc.terminals]

    def pop_delay(ti: int, sats: np.ndarray) -> np.ndarray:
        return table[row[ti]][:, sats]

    return pop_delay


#: Peak memory of planning per satellite per step and per link slot per step, bytes. Measured with
#: ``/usr/bin/time -f %M satnetem plan`` on a 72 x 22 Walker shell (1,584 satellites, 3,172 link slots) at
#: 300 and 900 steps: 157 and 380 MB peak, 372 kB per step; a 6 x 6 shell (36 satellites, ~80 slots) gave
#: 7.6 kB per step. Ephemeris (ECI and ECEF positions, geodetic coordinates) dominates the first, the
#: timeline's five arrays and the ISL intermediates the second. A floor, not a bound: PoPs with the
#: pop-delay policy and the summary's path computations add more.
PLAN_BYTES_PER_SAT_STEP = 128
PLAN_BYTES_PER_LINK_STEP = 56


def mem_available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo in bytes, or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def plan_memory_bytes(n_sats: int, n_links: int, n_steps: int) -> int:
    """Estimated peak memory of planning ``n_sats`` satellites and ``n_links`` link slots over ``n_steps``
    steps, bytes (see :data:`PLAN_BYTES_PER_SAT_STEP`)."""
    return n_steps * (n_sats * PLAN_BYTES_PER_SAT_STEP + n_links * PLAN_BYTES_PER_LINK_STEP)


def check_plan_memory(sc: Scenario, const: Constellation, available: int | None = None) -> None:
    """Refuse, before any array is allocated, a plan whose steps x links would not fit in memory.

    The timeline is computed and held whole (no chunked or streamed form exists), so the estimate of
    :func:`plan_memory_bytes` is compared with MemAvailable (``available`` bytes; default: this machine's).

    Raises
    ------
    ConfigError
        Naming ``time.step_s`` (the file and its line), the estimate and what the machine has.
    """
    from .scenario import scenario_error

    available = mem_available_bytes() if available is None else available
    if available is None:
        return
    antennas = sum(s.antennas or 1 for s in ground_sites(sc)) if sc.ground.gateways or sc.ground.cities \
        else sum(s.antennas or 1 for s in sc.ground.sites)
    n_links = 2 * const.n_sats + antennas + len(sc.terminals) + len(sc.hosts) + len(expand_compute(sc, const))
    need = plan_memory_bytes(const.n_sats, n_links, sc.time.n_steps)
    if need > available:
        raise scenario_error(sc, f"{sc.time.n_steps:,} steps x {n_links:,} link slots and {const.n_sats:,} "
                             f"satellites need about {need / 2**30:,.1f} GiB to plan, more than this machine's "
                             f"MemAvailable ({available / 2**30:,.1f} GiB); use a longer step_s or a shorter "
                             f"duration_s", "time.step_s")


def _compute_power(sc: Scenario, eph: Any, sun_km: np.ndarray, sats: list[int], nodes: list[Node]) -> Any:
    """The battery model (topologies.power) of every compute node, from its satellite's lit fraction; each
    compute node's info gets its ``battery_wh``. None without compute nodes."""
    if not sats:
        return None
    from .power import battery_series, lit_fraction

    cfg = sc.power_config()
    idx = np.asarray(sats, np.int64)
    # a satellite without an SGP4 state at a step gets no sunlight there (its battery runs down)
    lit = np.where(eph.valid[idx], lit_fraction(eph.r_teme_km[idx], sun_km[None, :, :]), 0.0)
    for n in nodes:
        if n.kind == "compute":
            n.info["battery_wh"] = cfg.battery_wh
    return battery_series(lit, cfg, sc.time.step_s)


def plan_scenario(sc: Scenario, constellation: Constellation | None = None) -> Timeline:
    """Compute the whole timeline of a scenario (no root, no kernel).

    Raises
    ------
    ConfigError
        A name the scenario refers to does not exist (a host's gateway, a compute node's satellite); the
        steps and links would not fit in memory. With the scenario's file, line and key.
    """
    try:
        return _plan_scenario(sc, constellation)
    except ConfigError as e:
        # checks made while planning know the key but not the line: find it in the scenario's file
        if e.file == sc.source and e.line is None and e.key:
            from .scenario import scenario_error

            raise scenario_error(sc, e.message, e.key) from None
        raise


def _plan_scenario(sc: Scenario, constellation: Constellation | None) -> Timeline:
    t0 = _time.perf_counter()
    const = constellation if constellation is not None else build_constellation(sc)
    check_plan_memory(sc, const)
    compute = expand_compute(sc, const)  # rules to nodes, and their satellites checked, before the heavy work
    t1 = _time.perf_counter()
    n_steps = sc.time.n_steps
    eph = propagate(const, sc.time.start, sc.time.step_s, n_steps)
    lat, lon, alt = ecef_to_geodetic(eph.r_ecef_km)  # for the timeline's sat_lla and the polar cutoff
    t_sun = _time.perf_counter()
    sun_km = sun_teme_km(eph.jd, eph.fr)
    sat_sunlight = sunlight_states(eph, sun_km)
    sunlight = sunlight_summary(eph, sun_km, sat_sunlight)
    t_sun = _time.perf_counter() - t_sun
    t2 = _time.perf_counter()
    isl_cfg = sc.isl_config()
    topo = plus_grid(const, isl_cfg)
    isl_state, isl_delay = isl_states(topo, eph, isl_cfg, lat_deg=lat)
    t2x = _time.perf_counter()
    xs = cross_shell_links(usable_spare(topo, isl_state, const.n_sats), const.shell,
                           [s.altitude_km for s in const.shells], eph, isl_cfg)
    t3 = _time.perf_counter()
    sites = ground_sites(sc)
    gsl_cfg = sc.gsl_config()
    meshed = _meshed(const.n_sats, topo.pairs, isl_state, xs.owner, xs.peer, xs.state)
    gsl = gsl_assign(sites, eph, gsl_cfg, meshed=meshed)
    terms = terminal_sites(sc)
    term_cfg = sc.terminal_config()
    bh = backhaul(sc, sites)
    pop_delay = _pop_delay(sc, const.n_sats, sites, gsl, gsl_cfg, topo.pairs, isl_state, isl_delay, xs, bh) \
        if terms and term_cfg.policy == "pop-delay" else None
    term = terminal_assign(terms, eph, gsl_cfg, term_cfg, meshed=meshed, pop_delay=pop_delay) if terms else None
    t4 = _time.perf_counter()

    n_sat = const.n_sats
    nodes: list[Node] = []
    off_grid = dict(const.transient)  # satellites in no shell (shell = plane = slot = -1): no lasers
    for i, name in enumerate(const.names):
        info: dict[str, Any] = {"shell": int(const.shell[i]), "plane": int(const.plane[i]),
                                "slot": int(const.slot[i])}
        if name in off_grid:
            info["transient"] = off_grid[name]
        if const.tle_names:
            info["tle_name"] = const.tle_names[i]
        nodes.append(Node(name, "sat", info))
    gw_index: dict[str, int] = {}
    for s in sites:
        gw_index[s.name] = len(nodes)
        nodes.append(Node(s.name, "gateway", {"lat_deg": s.lat_deg, "lon_deg": s.lon_deg, "alt_m": s.alt_m,
                                              "antennas": s.antennas or gsl_cfg.antennas,
                                              "access_delay_ms": gsl_cfg.access_delay_ms,
                                              "handover_interruption_ms": gsl_cfg.handover_interruption_ms}))
    sat_index = {name: i for i, name in enumerate(const.names)}
    term_index: dict[str, int] = {}
    for i, (t, spec) in enumerate(zip(terms, sc.terminals)):
        if t.name in gw_index or t.name in sat_index:
            raise ConfigError(f"terminal name {t.name!r} is already a node's name", file=sc.source,
                              key=f"terminals[{i}].name")
        term_index[t.name] = len(nodes)
        nodes.append(Node(t.name, "terminal", {"lat_deg": t.lat_deg, "lon_deg": t.lon_deg, "alt_m": t.alt_m,
                                               "antennas": 1, "country": spec.country, "pop": spec.pop,
                                               "access_delay_ms": term_cfg.access_delay_ms,
                                               "handover_interruption_ms": term_cfg.handover_interruption_ms}))
    pop_index: dict[str, int] = {}
    if bh is not None:
        for p in bh.pops:
            if p.node_name in gw_index or p.node_name in term_index:
                raise ConfigError(f"PoP node name {p.node_name!r} is already a node's name", file=sc.source,
                                  key="ground.pops")
            pop_index[p.node_name] = len(nodes)
            nodes.append(Node(p.node_name, "pop", {"code": p.code, "city": p.city, "country": p.country,
                                                   "lat_deg": p.lat_deg, "lon_deg": p.lon_deg}))
        for name, code in bh.home.items():
            nodes[term_index[name]].info["home_pop"] = f"pop-{code}"

    # hosts: the scenario's, plus one behind every gateway that has none
    hosts = [(h.name, h.gateway, f"hosts[{i}]") for i, h in enumerate(sc.hosts)]
    taken = {h[0] for h in hosts} | set(gw_index) | set(sat_index) | set(term_index) | set(pop_index)
    if sc.ground.host_per_gateway:
        with_host = {h[1] for h in hosts}
        for s in sites:
            if s.name not in with_host:
                name = "h-" + (s.name[3:] if s.name.startswith("gs-") else s.name)
                if name not in taken:
                    hosts.append((name, s.name, "ground"))
                    taken.add(name)
    if bh is not None:
        # an internet host behind each PoP that traffic needs: every home PoP, and any PoP whose host
        # h-pop-<code> a traffic entry names
        named = {e for t in sc.traffic for e in (t.src, t.dst)}
        home = set(bh.home.values())
        with_host = {h[1] for h in hosts}
        for p in bh.pops:
            name = f"h-{p.node_name}"
            if (p.code in home or name in named) and p.node_name not in with_host and name not in taken:
                hosts.append((name, p.node_name, "ground.pops"))
                taken.add(name)
    access: list[tuple[int, int]] = []
    for name, gw, key in hosts:
        if gw not in gw_index and gw not in pop_index:
            raise ConfigError(f"host {name!r} names gateway {gw!r}, which does not exist; gateways: "
                              f"{', '.join(sorted(gw_index)) or 'none'}" + (" and PoPs pop-..." if pop_index else ""),
                              file=sc.source, key=f"{key}.gateway")
        if name in sat_index or name in gw_index or name in term_index or name in pop_index:
            raise ConfigError(f"host name {name!r} is already a node's name", file=sc.source, key=f"{key}.name")
        access.append((len(nodes), gw_index[gw] if gw in gw_index else pop_index[gw]))
        nodes.append(Node(name, "host", {"gateway": gw}))
    for c in compute:
        if c.name in taken:
            by_rule = sc.compute[c.entry].satellite is None
            raise ConfigError(f"compute node name {c.name!r} is already a node's name", file=sc.source,
                              key=f"compute[{c.entry}].{'prefix' if by_rule else 'name'}")
        access.append((len(nodes), sat_index[c.satellite]))
        nodes.append(Node(c.name, "compute", c.info(sc.compute[c.entry])))

    check_traffic_endpoints(sc, {n.name for n in nodes}, {n.name: n.kind for n in nodes})

    # link table: +Grid ISLs, cross-shell laser slots, then gateway antennas, terminal beams, fibre (gateways
    # to PoPs, then the backbone), access links
    n_grid = len(topo.pairs)
    n_isl = n_grid + xs.n_slots
    n_gw_gsl = len(gsl.site)
    n_gsl = n_gw_gsl + (len(term.site) if term is not None else 0)
    fib = bh.links if bh is not None else []
    n_fib = len(fib)
    n_acc = len(access)
    n_links = n_isl + n_gsl + n_fib + n_acc
    link_a = np.empty(n_links, np.int32)
    link_class = np.empty(n_links, np.uint8)
    link_role = np.empty(n_links, np.uint8)
    state = np.empty((n_links, n_steps), np.uint8)
    peer = np.empty((n_links, n_steps), np.int32)
    delay = np.empty((n_links, n_steps), np.float32)
    rate = np.empty((n_links, n_steps), np.float32)
    loss = np.empty((n_links, n_steps), np.float32)

    isl = slice(0, n_isl)
    grid, xsl = slice(0, n_grid), slice(n_grid, n_isl)
    link_a[grid] = topo.pairs[:, 0]
    link_a[xsl] = xs.owner
    link_class[isl] = LINK_CLASSES.index("isl")
    link_role[grid] = topo.role
    link_role[xsl] = LINK_ROLES.index("cross-shell")
    state[grid] = isl_state
    state[xsl] = xs.state
    peer[grid] = topo.pairs[:, 1:2]
    peer[xsl] = xs.peer
    delay[grid] = isl_delay
    delay[xsl] = xs.delay_ms
    rate[isl] = isl_cfg.rate_mbps
    loss[isl] = isl_cfg.loss_pct

    # gateway antennas, then terminal beams: both ground-to-satellite slots
    ground_slots = [(slice(n_isl, n_isl + n_gw_gsl), gsl, [gw_index[sites[s].name] for s in gsl.site],
                     gsl_cfg.access_delay_ms)]
    if term is not None:
        ground_slots.append((slice(n_isl + n_gw_gsl, n_isl + n_gsl), term,
                             [term_index[terms[s].name] for s in term.site], term_cfg.access_delay_ms))
    for gs, res, owners, access_ms in ground_slots:
        link_a[gs] = np.array(owners, np.int32)
        link_class[gs] = LINK_CLASSES.index("gsl")
        link_role[gs] = LINK_ROLES.index("gsl")
        state[gs] = res.state
        peer[gs] = res.peer
        # scheduling and framing on the radio link ride on the propagation delay while a satellite is held
        delay[gs] = res.delay_ms + np.where(res.peer >= 0, np.float32(access_ms), np.float32(0.0))
        rate[gs] = gsl_cfg.rate_mbps
        loss[gs] = gsl_cfg.loss_pct

    fs = slice(n_isl + n_gsl, n_isl + n_gsl + n_fib)
    if n_fib:
        index = gw_index | pop_index
        link_a[fs] = [index[a] for a, _, _, _ in fib]
        peer[fs] = np.array([index[b] for _, b, _, _ in fib], np.int32)[:, None]
        delay[fs] = np.array([d for _, _, d, _ in fib], np.float32)[:, None]
        link_role[fs] = [LINK_ROLES.index(r) for _, _, _, r in fib]
        rate[fs] = bh.config.rate_mbps if bh is not None else 0.0
    link_class[fs] = LINK_CLASSES.index("fibre")
    state[fs] = Reason.UP
    loss[fs] = 0.0

    ac = slice(n_isl + n_gsl + n_fib, n_links)
    if n_acc:
        acc = np.array(access, np.int32)
        link_a[ac] = acc[:, 0]
        peer[ac] = acc[:, 1:2]
    link_class[ac] = LINK_CLASSES.index("access")
    link_role[ac] = LINK_ROLES.index("access")
    state[ac] = Reason.UP
    delay[ac] = 0.0
    rate[ac] = sc.emulation.access_rate_mbps
    loss[ac] = 0.0

    sat_lla = np.stack([lat, lon, alt], axis=-1).astype(np.float32)
    power = _compute_power(sc, eph, sun_km, [sat_index[c.satellite] for c in compute], nodes)
    t5 = _time.perf_counter()

    report: dict[str, Any] = {
        "constellation": {
            "source": const.source,
            "satellites": n_sat,
            "shells": [dataclasses.asdict(s) | {"satellites": int(np.count_nonzero(const.shell == k))}
                       for k, s in enumerate(const.shells)],
            "planes": int(sum(len(set(const.plane[const.shell == k].tolist()))
                              for k in range(len(const.shells)))),
            "excluded": dict(const.excluded),
            "transient": const.transient_counts,
        },
        "timings_s": {"constellation": t1 - t0, "propagate": t2 - t1 - t_sun, "isl": t2x - t2, "cross_shell": t3 - t2x,
                      "gsl": t4 - t3, "sunlight": t_sun,
                      "assemble": t5 - t4},
    }
    report["isl_topology"] = {k: (int(v) if isinstance(v, (int, np.integer)) else v)
                              for k, v in topo.stats.items()}
    report["cross_shell"] = xs.stats
    report["sunlight"] = sunlight
    if sc.constellation.tle and (sc.constellation.tle_inclination_deg is not None
                                 or sc.constellation.tle_altitude_km is not None):
        # one shell was chosen: list the others, so the user sees what else the file holds
        from .shells import find_shells
        from .tle import load_tle

        report["constellation"]["shells_in_file"] = [
            {"inclination_deg": round(float(c.inclination_deg), 2), "altitude_km": round(float(c.altitude_km), 1),
             "satellites": int(c.n_sats)} for c in find_shells(load_tle(sc.resolve(sc.constellation.tle)))]
    tl = Timeline(start=sc.time.start, step_s=sc.time.step_s, nodes=nodes, link_a=link_a,
                  link_class=link_class, link_role=link_role, state=state, peer=peer, delay_ms=delay,
                  rate_mbps=rate, loss_pct=loss, sat_lla=sat_lla, scenario=sc.raw, report=report,
                  sat_sunlight=sat_sunlight,
                  compute_charge_wh=None if power is None else power.charge_wh.astype(np.float32),
                  compute_power=None if power is None else power.state)
    if power is not None:
        from .power import power_summary

        # the parameters too: the emulator gives a throttled node throttle_share of its CPU
        report["power"] = power_summary(tl) | {"config": dataclasses.asdict(sc.power_config())}
    if sc.events:
        # scheduled events go in last, over the built arrays: what they take down is planned
        from .events import apply_events

        report["events"] = apply_events(tl, sc)
    return tl
