#!/usr/bin/env python3
"""A scripted experiment (the README's "Script an experiment"): fail a laser link on the path London -
New York and watch the routes, the predicted RTT and the measured ping follow.

Run as root from the repository: ``.venv/bin/python examples/scripted.py``. It builds
``examples/scripted.toml`` (400 satellites), pings between the two ground hosts, fails the
inter-satellite link of the predicted path whose loss costs the most (asked of a plan-only copy) from
the next step on, steps the clock, pings again, restores the link, plays a few seconds in real time
and tears everything down (also on Ctrl-C). tests/integration/test_api.py runs :func:`experiment` and
checks its figures.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script from anywhere: the repository's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emulator.api import Experiment, PathInfo, open_emulation  # noqa: E402

SCENARIO = Path(__file__).with_name("scripted.toml")


def ping_rtts_ms(emu: Experiment, src: str, dst: str, count: int, interval_s: float = 0.05) -> list[float]:
    """RTTs (ms) of ``count`` pings from node ``src`` to node ``dst``, through the node's shell."""
    out = emu.node(src).cmd(f"ping -n -c {count} -i {interval_s} -W 1 {emu.address_of(dst)}")
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]


@dataclass
class Phase:
    """One measurement: the predicted path and the RTTs ping measured on it."""

    path: PathInfo
    rtts_ms: list[float]

    @property
    def measured_ms(self) -> float:
        return statistics.median(self.rtts_ms) if self.rtts_ms else float("nan")

    def __str__(self) -> str:
        return (f"  path  {' > '.join(self.path.nodes)}\n"
                f"  RTT   predicted {self.path.rtt_ms:.2f} ms, measured {self.measured_ms:.2f} ms "
                f"(median of {len(self.rtts_ms)} pings)")


@dataclass
class Result:
    before: Phase
    failed: tuple[str, str]
    after: Phase
    restored: Phase


def experiment(emu: Experiment, src: str = "h-london", dst: str = "h-new-york", pings: int = 20,
               say=print) -> Result:
    """The experiment on an open emulation: measure, fail the ISL of the path whose loss costs the most,
    step, measure, restore."""
    ping_rtts_ms(emu, src, dst, 3)  # neighbour tables filled along the way
    before = Phase(emu.path(src, dst), ping_rtts_ms(emu, src, dst, pings))
    say(f"step {emu.current_step}:\n{before}")

    # which ISL of the path would cost the most if it failed at the next step? Asked of a plan-only copy,
    # which leaves the live network alone
    what_if = emu.what_if()
    what_if.step()

    def rtt_without(hop: tuple[str, str]) -> float:
        what_if.fail(hop)
        rtt = what_if.rtt_ms(src, dst)
        what_if.restore(hop)
        return rtt if math.isfinite(rtt) else -math.inf  # one that cuts the path off is no detour

    hop = max(before.path.isl_hops, key=rtt_without)
    emu.fail(hop, at=emu.current_step + 1)  # an unplanned failure, from the next step on
    say(f"failing {hop[0]} ~ {hop[1]} from step {emu.current_step + 1}")
    emu.step()
    link = emu.link(*hop)
    say(f"step {emu.current_step}: {link.ends[0]} ~ {link.ends[1]} is {link.reason}; {emu.state()}")
    after = Phase(emu.path(src, dst), ping_rtts_ms(emu, src, dst, pings))
    say(str(after))

    emu.restore(hop)  # now
    restored = Phase(emu.path(src, dst), ping_rtts_ms(emu, src, dst, pings))
    say(f"restored at step {emu.current_step}:\n{restored}")
    return Result(before, hop, after, restored)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default=str(SCENARIO))
    ap.add_argument("--pings", type=int, default=20)
    ap.add_argument("--play-s", type=float, default=5.0, help="seconds played in real time at the end")
    args = ap.parse_args(argv)
    with open_emulation(args.scenario) as emu:
        print(f"built {len(emu.names)} nodes; {emu.state()}")
        experiment(emu, pings=args.pings)
        records = emu.run(seconds=args.play_s)
        late = max((r.late_ms for r in records), default=0.0)
        print(f"played to step {emu.current_step} in real time (latest step {late:.1f} ms late): "
              f"{emu.path('h-london', 'h-new-york')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
