"""The ``satnetem`` command line: plan, run, cli, clean, protocols.

Only this module prints; everything else logs. A :class:`SatnetemError` ends the command with its
message and exit status 2, never with a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from topologies.errors import ConfigError, SatnetemError, check_range, one_line
from topologies.scenario import Scenario, check_shaper_rates, default_scenario, load_scenario, scenario_error
from topologies.timeline import LINK_CLASSES, LINK_ROLES, Reason, Timeline

log = logging.getLogger("satnetem")


def _scenario(args: argparse.Namespace) -> Scenario:
    sc = load_scenario(args.scenario) if args.scenario else default_scenario()
    if getattr(args, "tle", None):
        import dataclasses

        from topologies.scenario import ConstellationConfig

        tle = str(Path(args.tle).resolve())
        if not Path(tle).is_file():
            raise ConfigError("TLE file not found", file=args.tle)
        incl = getattr(args, "shell_inclination", None)
        sc = dataclasses.replace(sc, constellation=ConstellationConfig(tle=tle, tle_inclination_deg=incl),
                                 raw={**sc.raw, "constellation": {"tle": tle} | (
                                     {"tle_inclination_deg": incl} if incl is not None else {})})
        if not args.scenario:
            # The built-in scenario's start suits its Walker preset; a TLE set is propagated from its
            # own epochs (SGP4 drifts by kilometres a day away from them): start at the latest one.
            from topologies.tle import latest_epoch

            epoch = latest_epoch(tle)
            if epoch is not None:
                start = epoch.replace(second=0, microsecond=0)
                sc = dataclasses.replace(sc, time=dataclasses.replace(sc.time, start=start),
                                         raw={**sc.raw, "time": {**sc.raw.get("time", {}),
                                                                 "start": start.strftime("%Y-%m-%dT%H:%M:%SZ")}})
        if not args.scenario and sc.compute:
            # The built-in scenario's compute node sits on a satellite of its Walker preset, a name a
            # TLE set's shells need not have (several shells are named sat-<shell>-<plane>-<slot>).
            gone = {c.name for c in sc.compute}
            traffic = tuple(t for t in sc.traffic if t.src not in gone and t.dst not in gone)
            sc = dataclasses.replace(sc, compute=(), traffic=traffic,
                                     raw={k: v for k, v in sc.raw.items() if k != "compute"}
                                     | {"traffic": [t for t in sc.raw.get("traffic", [])
                                                    if t.get("src") not in gone and t.get("dst") not in gone]})
    if getattr(args, "include_transient", False):
        sc = with_transient(sc)
    return sc


def check_scenario(sc: Scenario, shaper: str | None = None) -> None:
    """What the scenario asks of the layers above ``topologies``, checked before planning: its routing
    protocol is installed (built-in or plugin), and with ``shaper`` (``--shaper``) its link rates are ones
    that backend can set (the scenario's own shaper was checked when it was loaded).

    Raises
    ------
    ConfigError
        Naming the scenario's file, line and key (``routing.protocol``, ``isl.rate_mbps``, ...).
    """
    from routing.base import check_protocol_options, get_protocol

    try:
        get_protocol(sc.routing.protocol)
    except ConfigError as e:
        raise scenario_error(sc, e.message, "routing.protocol") from None
    check_protocol_options(sc)  # [routing.ospf] and the like, whichever protocol runs
    if shaper is not None and shaper != sc.emulation.shaper:
        check_shaper_rates(sc, shaper)


#: numeric options and their ranges (name, lo, hi, lo_open): checked once for every command in :func:`check_args`
_ARG_RANGES = (("shell_inclination", "--shell-inclination", 0.0, 180.0, False),
               ("speed", "--speed", 0.01, 100.0, False),
               ("duration", "--duration", 0.0, 7 * 86400.0, True))


def check_args(args: argparse.Namespace) -> None:
    """Every numeric command-line value finite and in range (argparse checks only that it is a number).

    Raises
    ------
    ConfigError
        Naming the option, the value and the allowed range.
    """
    for attr, option, lo, hi, lo_open in _ARG_RANGES:
        value = getattr(args, attr, None)
        if value is not None:
            check_range(option, value, lo, hi, lo_open=lo_open)
    run_id = getattr(args, "run_id", None)
    if run_id is not None:
        from .clean import RUN_ID_RE  # the run id names namespaces and state files: never a path

        if not RUN_ID_RE.fullmatch(run_id):
            raise ConfigError(f"run id {run_id!r} must be lower-case letters, digits and '-' (at most 41, "
                              f"starting with a letter or digit)", key="--run-id")
    if getattr(args, "command", None) == "cluster":
        _check_cluster_args(args)
    if getattr(args, "map_at", None):
        for x in (x for x in args.map_at.split(",") if x.strip()):
            try:
                check_range("--map-at", float(x), 0.0, 7 * 86400.0)
            except ValueError:
                raise ConfigError(f"--map-at takes seconds separated by commas, got {args.map_at!r}",
                                  key="--map-at") from None


def _check_cluster_args(args: argparse.Namespace) -> None:
    """``cluster start|stop``: an IPv4 address, the head's IPV4:PORT, a host number that fits the role."""
    import ipaddress

    address = getattr(args, "address", None)
    if address is not None:
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise ConfigError(f"--address takes this host's IPv4 address on the cluster's network, got "
                              f"{address!r}", key="--address") from None
    if args.action != "start":
        return
    if args.join is not None:
        from .cluster.run import head_addr

        head_addr(args.join, "--join")
        if args.host is None or not 1 <= args.host <= 4095:
            raise ConfigError(f"--host must be this worker's number in [1, 4095] (the head is 0), got {args.host}",
                              key="--host")
    elif args.host not in (None, 0):
        raise ConfigError(f"the head is host 0, got --host {args.host}", key="--host")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``satnetem: error: ...``), like every other error of satnetem,
    instead of a usage block followed by the message."""

    def error(self, message: str) -> typing.NoReturn:
        command = self.prog.removeprefix("satnetem").strip()
        self.exit(2, one_line(f"satnetem: error: {command + ': ' if command else ''}{message} "
                              f"(see '{self.prog} --help')") + "\n")


def with_transient(sc: Scenario) -> Scenario:
    """The scenario with ``[constellation] include_transient = true`` (``--include-transient``)."""
    import dataclasses

    if not sc.constellation.tle:
        raise ConfigError("--include-transient needs a TLE constellation (--tle FILE, or tle = in the "
                          "scenario's [constellation])", key="include_transient")
    return dataclasses.replace(sc, constellation=dataclasses.replace(sc.constellation, include_transient=True),
                               raw={**sc.raw, "constellation": {**sc.raw.get("constellation", {}),
                                                                "include_transient": True}})


def _pairs(args: argparse.Namespace, sc: Scenario, tl: Timeline) -> list[tuple[str, str]]:
    if getattr(args, "pair", None):
        out = []
        for p in args.pair:
            a, sep, b = p.partition(",")
            if not sep or not a or not b:
                raise ConfigError(f"--pair takes two node names separated by a comma, got {p!r}")
            tl.node_index(a), tl.node_index(b)
            out.append((a, b))
        return out
    pairs = list(dict.fromkeys((t.src, t.dst) for t in sc.traffic if t.dst))
    if not pairs:
        hosts = [tl.nodes[i].name for i in tl.nodes_of("host")]
        pairs = [(hosts[0], hosts[1])] if len(hosts) >= 2 else []
    return pairs


def _stats(x: np.ndarray) -> dict[str, float | None]:
    x = x[np.isfinite(x)]
    if not len(x):
        return {"min": None, "median": None, "max": None}
    return {"min": float(np.min(x)), "median": float(np.median(x)), "max": float(np.max(x))}


def plan_summary(tl: Timeline, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """What a user wants to know about a timeline, as a JSON-able dict."""
    from routing.paths import path_delays_ms
    from topologies.connectivity import connectivity
    from topologies.crossshell import cross_shell_summary

    isl = (tl.link_class == LINK_CLASSES.index("isl")) & (tl.link_role != LINK_ROLES.index("cross-shell"))
    owner_kind = np.array([n.kind for n in tl.nodes] or [""], dtype=object)[tl.link_a] if tl.n_links else \
        np.empty(0, object)
    beam = (tl.link_class == LINK_CLASSES.index("gsl")) & (owner_kind == "terminal")
    gsl = (tl.link_class == LINK_CLASSES.index("gsl")) & (owner_kind == "gateway")
    st = tl.state[isl]
    by_reason = {Reason(r).label: round(float(np.mean(np.sum(st == r, axis=0))), 1)
                 for r in np.unique(st)}
    gsl_peer = tl.peer[gsl]
    handovers = int(np.sum(gsl_peer[:, 1:] != gsl_peer[:, :-1]))
    gw_names = [tl.nodes[int(i)].name for i in tl.link_a[gsl]]
    per_gw: dict[str, int] = {}
    for name, row in zip(gw_names, gsl_peer):
        per_gw[name] = per_gw.get(name, 0) + int(np.sum(row[1:] != row[:-1]))
    gsl_up = np.mean(tl.state[gsl] == Reason.UP) if gsl.any() else 0.0
    out: dict[str, Any] = {
        "start": tl.start.isoformat(),
        "step_s": tl.step_s,
        "steps": tl.n_steps,
        # "terminal" only where there are user terminals, so the summary of other plans keeps its shape
        "nodes": {k: len(tl.nodes_of(k)) for k in ("sat", "gateway", "terminal", "host", "compute", "pop")
                  if k not in ("terminal", "pop") or tl.nodes_of(k)},
        "constellation": tl.report.get("constellation", {}),
        "isl": {"links": int(isl.sum()), "mean_per_step_by_state": by_reason,
                "terminals": (tl.report.get("isl_topology") or {}).get("terminals"),
                "cross_shell": cross_shell_summary(tl)},
        "gsl": {"antennas": int(gsl.sum()), "up_fraction": round(float(gsl_up), 3),
                "handovers": handovers, "handovers_per_gateway": per_gw},
        "terminals": [{"name": tl.nodes[int(a)].name,
                       "with_satellite_fraction": round(float(np.mean(row >= 0)), 4),
                       "handovers": int(np.sum(row[1:] != row[:-1]))}
                      for a, row in zip(tl.link_a[beam], tl.peer[beam])],
        "paths": [],
        "timings_s": tl.report.get("timings_s", {}),
    }
    if tl.report.get("sunlight"):
        out["sunlight"] = tl.report["sunlight"]
    if tl.report.get("power"):
        out["power"] = tl.report["power"]
    fibre = tl.link_class == LINK_CLASSES.index("fibre")
    if fibre.any():
        out["fibre"] = {r: int(np.sum(fibre & (tl.link_role == LINK_ROLES.index(r)))) for r in ("backhaul", "backbone")}
        from routing.graph import backhaul_policy

        out["backhaul_policy"] = backhaul_policy(tl)
    for a, b in pairs:
        one_way = path_delays_ms(tl, tl.node_index(a), tl.node_index(b))
        reach = np.isfinite(one_way)
        out["paths"].append({"src": a, "dst": b, "reachable_fraction": round(float(reach.mean()), 3),
                             "one_way_ms": _stats(one_way), "rtt_ms": _stats(2 * one_way)})
    out["paths"] += home_pop_paths(tl)
    conn = connectivity(tl, pairs)
    out["connectivity"] = {
        "components": {k: int(f(conn.components)) for k, f in (("min", np.min), ("median", np.median),
                                                               ("max", np.max))},
        "largest_min": int(conn.largest.min()),
        "isolated_max": int(conn.isolated.max()),
        "pairs": [{"src": p.src, "dst": p.dst, "connected_fraction": round(p.connected_fraction, 4),
                   "first_split": p.first_split} for p in conn.pairs],
        "warnings": [w for w in (p.warning() for p in conn.pairs) if w],
    }
    if tl.report.get("events"):
        from routing.event_paths import event_path_effects

        out["events"] = event_path_effects(tl, pairs)
    return out


def _stats4(x: np.ndarray) -> dict[str, float | None]:
    x = x[np.isfinite(x)]
    keys = ("min", "median", "p95", "max")
    if not len(x):
        return dict.fromkeys(keys)
    return dict(zip(keys, (float(v) for v in np.percentile(x, [0, 50, 95, 100]))))


def home_pop_paths(tl: Timeline) -> list[dict[str, Any]]:
    """Each user terminal's predicted RTT to its home PoP over the least-delay path (satellite, lasers,
    gateway, fibre; or the path ``[backhaul] policy`` chooses) at every step: min/median/p95/max, and the
    same split into the space segment (beam, lasers and gateway links: propagation at c), access delay
    (scheduling and framing on the beam and gateway links) and fibre. Links are symmetric, so the RTT is twice
    the one-way delay."""
    from routing.graph import policy_factors
    from routing.paths import access_delays_ms, class_delays_ms

    pairs = [(i, tl.node_index(tl.nodes[i].info["home_pop"])) for i in tl.nodes_of("terminal")
             if tl.nodes[i].info.get("home_pop")]
    split = class_delays_ms(tl, pairs, factor=policy_factors(tl), access_ms=access_delays_ms(tl))
    space = [LINK_CLASSES.index("isl"), LINK_CLASSES.index("gsl")]
    out = []
    for (t, p), d in split.items():
        one_way = d.sum(axis=1)
        out.append({"src": tl.nodes[t].name, "dst": tl.nodes[p].name, "home_pop": tl.nodes[p].info.get("code"),
                    "reachable_fraction": round(float(np.isfinite(one_way).mean()), 3),
                    "one_way_ms": _stats4(one_way), "rtt_ms": _stats4(2 * one_way),
                    "rtt_split_ms": {"space": _stats4(2 * d[:, space].sum(axis=1)),
                                     "access": _stats4(2 * d[:, len(LINK_CLASSES)]),
                                     "fibre": _stats4(2 * d[:, LINK_CLASSES.index("fibre")])}})
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_plan(s: dict[str, Any], out_path: Path | None) -> None:
    c = s["constellation"]
    n = s["nodes"]
    print(f"satnetem plan: {s['steps']} steps of {s['step_s']:g} s from {s['start']}")
    shells = c.get("shells") or []
    off_grid = sum((c.get("transient") or {}).values())
    print(f"  constellation  {c.get('source', '?')}: {n['sat']} satellites in {c.get('planes', '?')} planes"
          + (f" of {len(shells)} shells" if len(shells) > 1 else "")
          + (f", {off_grid} of them off the grid" if off_grid else ""))
    if len(shells) > 1:
        for sh in shells:
            print(f"  shell          {sh['name']}: {sh.get('satellites', '?')} satellites in {sh['planes']} planes "
                  f"({sh['inclination_deg']:.2f} deg, {sh['altitude_km']:.0f} km, {sh['pattern']})")
    if off_grid:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(c["transient"].items(), key=lambda kv: -kv[1]))
        print(f"  off the grid   {off_grid} satellites in no shell, nodes without laser links ({reasons})")
    if c.get("excluded"):
        left = sum(c["excluded"].values())
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(c["excluded"].items(), key=lambda kv: -kv[1]))
        print(f"  left out       {left} satellites ({reasons})")
    if c.get("shells_in_file"):
        found = ", ".join(f"{x['inclination_deg']:g} deg/{x['altitude_km']:.0f} km ({x['satellites']})"
                          for x in c["shells_in_file"])
        print(f"  shells in file {found}")
    print(f"  nodes          {n['gateway']} gateways, "
          + (f"{n['terminal']} user terminals, " if n.get("terminal") else "")
          + f"{n['host']} ground hosts, {n['compute']} compute nodes")
    isl = s["isl"]
    states = ", ".join(f"{k} {v:g}" for k, v in sorted(isl["mean_per_step_by_state"].items(),
                                                        key=lambda kv: (kv[0] != "up", -kv[1])))
    terminals = f"{isl['terminals']} laser terminals per satellite, " if isl.get("terminals") is not None else ""
    print(f"  ISLs           {terminals}{isl['links']} +Grid links; per step on average: {states}")
    x = isl.get("cross_shell") or {}
    if x.get("terminals"):
        life = x["lifetime_median_s"]
        share = x["acquiring_share"]
        print(f"  cross-shell    {x['terminals']} spare terminals, {x['slots']} slots: {x['up_mean']:g} links up "
              f"per step on average, {x['links']} links, median lifetime {'-' if life is None else f'{life:.0f}'} s, "
              f"{_fmt(x['acquisitions_per_terminal_day'])} acquisitions per terminal per day, "
              f"{_fmt(None if share is None else 100 * share)}% of terminal time acquiring")
    sun = s.get("sunlight")
    if sun:
        print(f"  sunlight       satellite-time in umbra {sun['umbra_pct']:.1f}%, penumbra {sun['penumbra_pct']:.2f}%; "
              f"{sun['eclipses']} eclipses (umbra entries) on {sun['sats_eclipsed']} satellites"
              + (f", longest whole umbra {sun['longest_umbra_s'] / 60:.1f} min" if sun["longest_umbra_s"] else ""))
    pw = s.get("power")
    if pw:
        kinds = {k: sum(1 for e in pw["events"] if e["state"] == k) for k in ("throttled", "stopped")}
        share = pw["state_pct"]
        print(f"  power          {pw['nodes']} compute batteries: node-time throttled {share['throttled']:.1f}%, "
              f"stopped {share['stopped']:.1f}%; lowest charge {pw['min_charge_pct']:.0f}% "
              f"({pw['min_charge_node']} at step {pw['min_charge_step']}); {kinds['throttled']} throttle and "
              f"{kinds['stopped']} stop events")
        for e in pw["events"][:8]:
            print(f"  power event    t={e['t_s']:g} s (step {e['step']}) {e['node']} on {e['satellite']}: "
                  f"{e['previous']} -> {e['state']} at {e['charge_pct']:.0f}%")
        if len(pw["events"]) > 8:
            print(f"  power event    ... {len(pw['events']) - 8} more (plan --json lists them all)")
    for m in s.get("migrations") or []:
        print(f"  migration      {m['flow']}: {m['from']} -> {m['to']} by t={m['switch_t_s']:g} s (step "
              f"{m['switch_step']}), {m['mb']:g} MB of state from step {m['start_step']}")
    g = s["gsl"]
    print(f"  GSLs           {g['antennas']} gateway antennas, up {100 * g['up_fraction']:.1f}% of the time, "
          f"{g['handovers']} handovers")
    terms = s.get("terminals") or []
    if terms:
        share = np.array([t["with_satellite_fraction"] for t in terms])
        print(f"  terminals      {len(terms)} user terminals, one beam each: with a satellite in "
              f"{100 * share.mean():.1f}% of steps (worst {terms[int(share.argmin())]['name']} "
              f"{100 * share.min():.1f}%), {sum(t['handovers'] for t in terms)} handovers")
    if n.get("pop"):
        print(f"  PoPs           {n['pop']} PoPs, {s.get('fibre', {}).get('backhaul', 0)} gateway fibre links, "
              f"{s.get('fibre', {}).get('backbone', 0)} backbone links, "
              f"policy {s.get('backhaul_policy', 'least-delay')}")
    for p in s["paths"]:
        if "home_pop" in p:
            r, sp, fi = p["rtt_ms"], p["rtt_split_ms"]["space"], p["rtt_split_ms"]["fibre"]
            ac = p["rtt_split_ms"]["access"]

            def four(x: dict[str, float | None]) -> str:
                return "/".join(_fmt(x[k]) for k in ("min", "median", "p95", "max"))

            print(f"  {p['src']} -> home PoP {p['dst']}: RTT ms min/median/p95/max {four(r)} (space {four(sp)}, "
                  f"access {four(ac)}, fibre {four(fi)}), reachable {100 * p['reachable_fraction']:.0f}% of steps")
            continue
        r = p["rtt_ms"]
        o = p["one_way_ms"]
        print(f"  {p['src']} -> {p['dst']}: one-way ms min/median/max {_fmt(o['min'])}/{_fmt(o['median'])}/"
              f"{_fmt(o['max'])}, RTT {_fmt(r['min'])}/{_fmt(r['median'])}/{_fmt(r['max'])}, "
              f"reachable {100 * p['reachable_fraction']:.0f}% of steps")
    cn = s["connectivity"]
    comp = cn["components"]
    print(f"  connectivity   components per step min/median/max {comp['min']}/{comp['median']}/{comp['max']}, "
          f"largest at least {cn['largest_min']} of {sum(n.values())} nodes, "
          f"at most {cn['isolated_max']} with no link up")
    for p in cn["pairs"]:
        print(f"  {p['src']} ~ {p['dst']}: connected in {100 * p['connected_fraction']:.1f}% of steps")
    for w in cn["warnings"]:
        print(f"  warning: {w}")
    if s.get("events"):
        from routing.event_paths import describe

        for ev in s["events"]:
            for k, line in enumerate(describe(ev, s["step_s"])):
                print(f"  {'events' if not ev['index'] and not k else '':<15}{line}")
    if "run_needs" in s:
        print(f"  a run needs    {s['run_needs']}")
    if s.get("placement"):
        from .cluster.placement import describe_one

        for p in s["placement"]:
            print(f"  placement      {describe_one(p)}")
    if out_path:
        print(f"  timeline       written to {out_path}")


def cmd_plan(args: argparse.Namespace) -> int:
    from topologies.plan import plan_scenario

    sc = _scenario(args)
    check_scenario(sc, getattr(args, "shaper", None))
    tl = plan_scenario(sc)
    out = Path(args.output) if args.output else None
    if out:
        try:
            tl.save(out)
        except OSError as e:
            raise ConfigError(f"cannot write the timeline: {e.strerror or e}", file=str(out), key="--output") from None
    summary = plan_summary(tl, _pairs(args, sc, tl))
    from .kernel.budget import needs_of_timeline

    summary["run_needs"] = needs_of_timeline(tl, getattr(args, "shaper", None) or sc.emulation.shaper).describe()
    from .migration import scenario_migrations

    summary["migrations"] = scenario_migrations(sc, tl)  # request flows with policy "best"
    if args.hosts is not None:  # issue 13: how each placement strategy would split the nodes over hosts
        from .cluster.placement import summary as placement_summary

        summary["placement"] = placement_summary(tl, args.hosts, seed=sc.seed)
    if args.json:
        if out:
            summary["timeline"] = str(out)
        print(json.dumps(summary, indent=2))
    else:
        print_plan(summary, out)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import run

    return run(args)


def cmd_cli(args: argparse.Namespace) -> int:
    from .runner import interactive

    return interactive(args)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report

    if len(args.results) > 1:
        from .pooled import pool, print_pooled

        print_pooled(pool(args.results), args.results)
        return 0
    args.results = args.results[0]
    at = None
    if args.map_at:
        try:
            at = [float(x) for x in args.map_at.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--map-at takes seconds separated by commas, got {args.map_at!r}") from None
    s = report(args.results, at)
    from .runner import print_summary

    print_summary(s, Path(args.results))
    print(f"  plots: {len(s.get('plots', []))} files in {Path(args.results) / 'plots'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare

    return compare(args)


def cmd_clean(args: argparse.Namespace) -> int:
    from .clean import clean

    report = clean(args.run_id)
    print(f"satnetem clean: killed {len(report.killed)} processes in {report.namespaces} namespaces, "
          f"removed {len(report.netns_removed)} named namespaces and {len(report.state_files_removed)} "
          f"state files, {len(report.cgroups_removed)} cgroups"
          + (f"; STILL RUNNING: {report.remaining}" if report.remaining else ""))
    return 0 if report.ok else 1


def cmd_cluster(args: argparse.Namespace) -> int:
    """``satnetem cluster start|stop``: this host's Ray node for clustered runs (emulator.cluster.raynode); the
    arguments are checked by :func:`check_args`."""
    from .cluster import raynode
    from .runner import _require_root

    _require_root()
    if args.action == "stop":
        ended, guard = raynode.stop_node(args.address)
        print(f"satnetem cluster: ended {ended} processes of this host's Ray node"
              f"{f' ({args.address})' if args.address else ''}; "
              + (f"removed the nft table inet {raynode.GUARD_TABLE}" if guard else "no guard table was left"))
        return 0
    role, host = ("worker", int(args.host)) if args.join is not None else ("head", 0)
    return raynode.start_node(role, args.address, host, args.token, head=args.join, block=args.block)


def cmd_protocols(args: argparse.Namespace) -> int:
    from routing.base import available_protocols

    rows = available_protocols()
    if args.json:
        print(json.dumps([{"name": n, "origin": o, "description": d} for n, o, d in rows], indent=2))
        return 0
    width = max((len(n) for n, _, _ in rows), default=0)
    for name, origin, desc in rows:
        print(f"{name:<{width}}  {desc}")
        print(f"{'':<{width}}  from {origin}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="satnetem", description="Emulate inter-satellite laser networks "
                                "with real packets.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (debug detail with -vv)")
    sub = p.add_subparsers(dest="command", required=True)

    pl = sub.add_parser("plan", help="compute the timeline of a scenario (no root)")
    pl.add_argument("scenario", nargs="?", help="scenario TOML file (default: the built-in scenario)")
    pl.add_argument("--tle", help="plan straight from a TLE file (defaults for everything else)")
    pl.add_argument("--shell-inclination", type=float, metavar="DEG",
                    help="with --tle: build only the shell nearest this inclination (default: every "
                    "operational shell)")
    pl.add_argument("--include-transient", action="store_true",
                    help="with a TLE set: also build the satellites in no shell (orbit-raising, decaying, "
                    "between shells, sparse planes) as nodes without laser links")
    pl.add_argument("-o", "--output", help="write the timeline to this .npz file")
    pl.add_argument("--json", action="store_true", help="print the summary as JSON")
    pl.add_argument("--pair", action="append", metavar="A,B",
                    help="report predicted delay between these two nodes (repeatable)")
    pl.add_argument("--hosts", type=int, metavar="H",
                    help="also place the nodes on H hosts by each strategy (orbital planes kept whole; METIS graph "
                    "partition) and print the link slots that would cross hosts")
    pl.set_defaults(func=cmd_plan)

    for name, helptext, func in (("run", "build the network, play the timeline, probe, write results",
                                  cmd_run),
                                 ("cli", "the Mininet CLI on the live constellation while the clock runs",
                                  cmd_cli)):
        r = sub.add_parser(name, help=helptext)
        r.add_argument("scenario", nargs="?", help="scenario TOML file (default: the built-in scenario)")
        r.add_argument("--timeline", help="replay a timeline saved by 'plan -o' instead of planning")
        r.add_argument("--include-transient", action="store_true",
                       help="with a scenario's TLE set: also build the satellites in no shell as nodes "
                       "without laser links")
        r.add_argument("--shaper", choices=("auto", "netem", "userspace"), default=None,
                       help="link shaping backend (default: the scenario's, else auto)")
        r.add_argument("--speed", type=float, default=None, help="playback speed factor (default 1)")
        r.add_argument("--duration", type=float, default=None, help="play only this many seconds")
        r.add_argument("-o", "--results", default=None, help="results folder (default results/<time>)")
        r.add_argument("--run-id", default=None,
                       help="names this run's processes, namespaces and state file, for 'clean --run-id' "
                       "(default <pid>-<random>)")
        if name == "run":
            r.add_argument("--cluster", metavar="IPV4:PORT", default=None,
                           help="run over the hosts of the Ray cluster whose head is here (overrides [cluster] "
                           "address; each host's Ray node offers the resource satnetem-host-<h>)")
        r.set_defaults(func=func)

    cp = sub.add_parser("compare", help="the same timeline and traffic under several routing protocols")
    cp.add_argument("scenario", nargs="?", help="scenario TOML file (default: the built-in scenario)")
    cp.add_argument("--protocols", required=True, help="comma-separated protocol names (see 'satnetem protocols')")
    cp.add_argument("--timeline", help="use this saved timeline instead of planning")
    cp.add_argument("--shaper", choices=("auto", "netem", "userspace"), default=None)
    cp.add_argument("--speed", type=float, default=None)
    cp.add_argument("--duration", type=float, default=None, help="play only this many seconds per protocol")
    cp.add_argument("-o", "--results", default=None, help="comparison folder (default results/<time>-compare)")
    cp.add_argument("--run-id", default=None,
                    help="each protocol's run is named <run-id>-<protocol>, for 'clean --run-id' "
                    "(default <pid>-<random>)")
    cp.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="rebuild the summary and plots of a results folder (no root)")
    rp.add_argument("results", nargs="+", help="results folder written by 'satnetem run'; with several "
                    "(runs of one scenario), their delay errors pooled per flow: p50, p95, p99, max")
    rp.add_argument("--map-at", metavar="S,S,...", help="draw the map at these times (s) of the run "
                    "(default: start, middle, end)")
    rp.set_defaults(func=cmd_report)

    pr = sub.add_parser("protocols", help="list the routing protocols: built-in and installed plugins (no root)")
    pr.add_argument("--json", action="store_true", help="print the list as JSON")
    pr.set_defaults(func=cmd_protocols)

    cl = sub.add_parser("cluster", help="this host's Ray node for 'run --cluster': started with the token and Ray's "
                        "ports kept to the cluster's interface, or stopped (root)")
    csub = cl.add_subparsers(dest="action", required=True)
    cs = csub.add_parser("start", help="start this host's Ray node (the head, or a worker joining it)")
    cs.add_argument("--address", required=True, metavar="IPV4",
                    help="this host's address on the cluster's network: Ray's ports are reachable on its "
                    "interface (and lo) only")
    who = cs.add_mutually_exclusive_group(required=True)
    who.add_argument("--head", action="store_true", help="start the head (host 0)")
    who.add_argument("--join", metavar="IPV4:PORT", default=None, help="join the head at this address as a worker")
    cs.add_argument("--host", type=int, default=None, help="this host's number: 0 for the head, 1, 2, ... for "
                    "the workers (its agent runs on the node offering satnetem-host-<h>)")
    cs.add_argument("--token", default="/etc/satnetem/ray-token",
                    help="the cluster's token, a file readable by root only (default /etc/satnetem/ray-token)")
    cs.add_argument("--block", action="store_true",
                    help="stay in the foreground until the node ends (for a service manager)")
    cx = csub.add_parser("stop", help="end this host's Ray node and remove its firewall table")
    cx.add_argument("--address", default=None, metavar="IPV4", help="only the node started with this address")
    cl.set_defaults(func=cmd_cluster)

    c = sub.add_parser("clean", help="remove everything a crashed run may have left, and nothing else")
    c.add_argument("--run-id", default=None, help="only what this run left (default: every run's leftovers)")
    c.set_defaults(func=cmd_clean)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING
    if args.verbose:
        level = logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        check_args(args)
        return int(args.func(args) or 0)
    except SatnetemError as e:
        print(f"satnetem: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("satnetem: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
