"""Ray on three fake hosts (emulator.cluster.raylab): a Ray node started inside each fake host's namespace
with its underlay address, token authentication on, one actor per host pinned by the host's resource.

Where each actor runs is checked against the lab, not against what Ray says: its source address toward the
head must be its fake host's underlay address and its network namespace the fake host's (inode of the
namespace file); a driver without the token must be refused by the cluster (InvalidAuthToken from the GCS);
after the teardown no process is left in any of the lab's namespaces. 35-50 s, most of it Ray's start and
the refused driver's retries.
"""

from __future__ import annotations

import importlib.util
import os
import platform

import pytest

from emulator.clean import find_ours
from emulator.cluster.lab import FakeHosts, LabConfig
from emulator.cluster.raylab import RayLab
from topologies.errors import ApplyError

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def ray_lab():
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("ray is not installed (install.sh installs satnetem[cluster])", pytrace=False)
        pytest.skip("ray is not installed: pip install -e .[cluster]")
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with FakeHosts(f"t-ray-{os.getpid()}", LabConfig(n_hosts=3)) as lab:
        with RayLab(lab) as rl:
            yield lab, rl
        inside, _ = find_ours(lab.run_id)
        assert inside == {lab.holder.pid}, f"left in the lab's namespaces: {sorted(inside)}"


def test_one_actor_per_fake_host(ray_lab):
    import ray

    lab, rl = ray_lab
    got = rl.probe()
    clocks = ", ".join(f"{a['clock']['offset_ms']:+.3f} +- {a['clock']['bound_ms']:.3f}" for a in got["agents"])
    print(f"ray start {rl.start_s}, probe: connect {got['connect_s']:.2f} s, actors {got['actors_s']:.2f} s, "
          f"clock offsets ms {clocks}")
    assert got["nodes"] == 3
    for h, agent in enumerate(got["agents"]):
        assert agent["addr"] == lab.address(h)
        assert agent["netns"] == os.stat(lab.host_path(h)).st_ino
        assert (agent["python"], agent["ray"]) == (platform.python_version(), ray.__version__)
        # the fake hosts share this machine's clock: the true offset is 0, which the estimate must bound
        c = agent["clock"]
        assert abs(c["offset_ms"]) <= c["bound_ms"] + 0.001 and c["bound_ms"] < 50, c
    assert len({a["pid"] for a in got["agents"]}) == 3


def test_a_driver_without_the_token_is_refused(ray_lab):
    # a client with authentication off, as anyone who reaches the head's port: the GCS refuses its first RPC
    # (the client retries for ~20 s first). A wrong token is refused the same way (checked by hand: 21.6 s).
    _, rl = ray_lab
    with pytest.raises(ApplyError, match="RPC error: InvalidAuthToken"):
        rl.probe(token="none")
