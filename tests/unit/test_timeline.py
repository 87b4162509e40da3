"""Timeline: snapshots, diffs and their inverses, the file format."""

from datetime import UTC, datetime

import numpy as np
import pytest

from topologies.errors import ConfigError
from topologies.timeline import Node, Reason, Timeline, diff


def make_timeline(n_links=6, n_steps=8, seed=0):
    rng = np.random.default_rng(seed)
    nodes = [Node(f"sat-0-{i}", "sat", {"shell": 0, "plane": 0, "slot": i}) for i in range(4)]
    nodes += [Node("gs-a", "gateway", {"lat_deg": 1.0, "lon_deg": 2.0, "alt_m": 0.0, "antennas": 1})]
    state = rng.choice([0, 0, 0, int(Reason.RANGE), int(Reason.ACQUIRING)], size=(n_links, n_steps))
    peer = rng.integers(-1, 4, size=(n_links, n_steps))
    delay = rng.uniform(1, 20, size=(n_links, n_steps))
    rate = np.full((n_links, n_steps), 100.0)
    rate[0, 4:] = 50.0
    loss = np.zeros((n_links, n_steps))
    return Timeline(start=datetime(2023, 7, 18, 12, tzinfo=UTC), step_s=1.0, nodes=nodes,
                    link_a=np.zeros(n_links, np.int32), link_class=np.zeros(n_links, np.uint8),
                    link_role=np.zeros(n_links, np.uint8), state=state.astype(np.uint8),
                    peer=peer.astype(np.int32), delay_ms=delay.astype(np.float32),
                    rate_mbps=rate.astype(np.float32), loss_pct=loss.astype(np.float32),
                    sat_lla=np.zeros((4, n_steps, 3), np.float32), scenario={"name": "t"})


def same(a, b):
    return (np.array_equal(a.state, b.state) and np.array_equal(a.peer, b.peer)
            and np.array_equal(a.params, b.params))


def test_diff_applied_gives_target_and_inverse_cancels():
    tl = make_timeline()
    for k in range(1, tl.n_steps):
        a, b = tl.snapshot(k - 1), tl.snapshot(k)
        d = diff(a, b)
        assert same(a.apply(d), b)
        assert same(a.apply(d).apply(d.inverse()), a)
        assert same(b.apply(d.inverse()), a)


def test_diff_reports_up_down_handover_and_rate():
    tl = make_timeline()
    a, b = tl.snapshot(3), tl.snapshot(4)
    d = diff(a, b)
    up = {i for i in range(tl.n_links) if a.state[i] != 0 and b.state[i] == 0}
    down = {i for i in range(tl.n_links) if a.state[i] == 0 and b.state[i] != 0}
    assert set(d.went_up.tolist()) == up
    assert set(d.went_down.tolist()) == down
    assert set(d.handovers.tolist()) == {i for i in range(tl.n_links) if a.peer[i] != b.peer[i]}
    assert 0 in d.param_links  # rate of link 0 changes at step 4


def test_same_snapshot_gives_empty_diff():
    tl = make_timeline()
    assert diff(tl.snapshot(2), tl.snapshot(2)).empty


def test_delay_tolerance_never_lets_error_accumulate():
    tl = make_timeline(n_links=3, n_steps=200)
    tl.delay_ms[:] = (10 + 0.003 * np.arange(200)).astype(np.float32)  # slow drift below tolerance per step
    tl.state[:] = 0
    tl.peer[:] = 1
    tl.rate_mbps[:] = 100
    applied = tl.snapshot(0)
    changes = 0
    for d in tl.diffs(delay_tolerance_ms=0.05):
        applied = applied.apply(d)
        changes += len(d.param_links)
        truth = tl.snapshot(d.to_step)
        assert np.max(np.abs(applied.params[:, 0] - truth.params[:, 0])) <= 0.05 + 1e-5
    assert 0 < changes < 3 * 199  # fewer kernel changes than steps, but the drift is followed


def test_save_load_roundtrip_is_exact(tmp_path):
    tl = make_timeline()
    p = tl.save(tmp_path / "t.npz")
    back = Timeline.load(p)
    for name in ("state", "peer", "delay_ms", "rate_mbps", "loss_pct", "link_a", "link_class", "link_role",
                 "sat_lla"):
        assert np.array_equal(getattr(tl, name), getattr(back, name)), name
        assert getattr(tl, name).dtype == getattr(back, name).dtype
    assert back.start == tl.start and back.step_s == tl.step_s
    assert [n.name for n in back.nodes] == [n.name for n in tl.nodes]
    assert back.nodes[4].info["lat_deg"] == 1.0
    assert back.scenario == {"name": "t"}


def test_load_rejects_garbage(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_text("not a zip")
    with pytest.raises(ConfigError, match="x.npz"):
        Timeline.load(bad)
    with pytest.raises(ConfigError, match="not found"):
        Timeline.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "y.npz", state=np.zeros((1, 1)))
    with pytest.raises(ConfigError, match="no 'meta'"):
        Timeline.load(tmp_path / "y.npz")
