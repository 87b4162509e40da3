"""Satellites off the grid on a live network: built from a TLE set with include_transient, a satellite
in no shell is a namespace with ground links and no laser interface, and a host pings it through its
gateway."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
from sgp4.exporter import export_tle

from topologies.constellation import Shell
from topologies.walker import preset, walker_constellation

pytestmark = pytest.mark.root
EPOCH = datetime(2023, 7, 18, tzinfo=UTC)


def _scenario_text(tle: str, sites: str) -> str:
    return (f'[time]\nstart = "2023-07-18T00:00:00Z"\nduration_s = 5\n[constellation]\ntle = "{tle}"\n'
            f'include_transient = true\n[gsl]\nmin_elevation_deg = 25.0\nsatellites = "any"\n{sites}')


def test_an_off_grid_satellite_is_a_live_node_with_ground_links_only(tmp_path):
    from emulator.api import open_emulation
    from topologies.plan import plan_scenario
    from topologies.scenario import parse_scenario

    # Iridium's 66 satellites (a shell) and 3 alone at 580 km, 60 deg (too few to be one: off the grid)
    stray = Shell(name="stray", pattern="delta", altitude_km=580.0, inclination_deg=60.0, planes=1,
                  sats_per_plane=3)
    walker = walker_constellation([preset("iridium"), stray], EPOCH)
    tle = tmp_path / "mixed.tle"
    tle.write_text("".join(f"{name}\n" + "\n".join(export_tle(s)) + "\n"
                           for name, s in zip(walker.names, walker.satrecs)))
    probe = plan_scenario(parse_scenario(_scenario_text(str(tle), ""), str(tmp_path / "probe.toml")))
    off = [n for n in probe.nodes if n.kind == "sat" and n.info["shell"] == -1]
    assert [n.name for n in off] == ["sat-t-0", "sat-t-1", "sat-t-2"]
    lat, lon, _alt = (float(x) for x in probe.sat_lla[probe.node_index("sat-t-0"), 0])
    sites = f'[[ground.sites]]\nname = "gs-under"\nlat_deg = {lat}\nlon_deg = {lon}\n'
    sc = parse_scenario(_scenario_text(str(tle), sites), str(tmp_path / "live.toml"))

    with open_emulation(sc, run_id=f"t-transient-{os.getpid()}") as emu:
        assert emu.link("gs-under", "sat-t-0")  # the gateway's antenna points at it
        ifaces = emu.node("sat-t-0").cmd("ls /sys/class/net").split()
        assert "lo" in ifaces and not {"fore", "aft", "left", "right"} & set(ifaces)
        assert any(i.startswith("g") for i in ifaces)
        out = emu.node("h-under").cmd(f"ping -c 3 -W 2 {emu.address_of('sat-t-0')}")
        assert " 0% packet loss" in out, out
