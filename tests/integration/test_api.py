"""The scripting API on a live network: the example's experiment with real pings (measured RTT against
the predicted one before and after an ISL fails), the failed link down in the kernel and routed around,
and the teardown after an exception and after Ctrl-C."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from emulator.clean import find_ours

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "scripted.toml"


def load_example():
    spec = importlib.util.spec_from_file_location("scripted_example", ROOT / "examples" / "scripted.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def within(measured_ms: float, predicted_ms: float) -> bool:
    """The project's fidelity bound: max(1 ms, 3%)."""
    return abs(measured_ms - predicted_ms) <= max(1.0, 0.03 * predicted_ms)


def flags_up(emu, node: str, ifname: str) -> bool:
    return bool(int(emu.node(node).cmd(f"cat /sys/class/net/{ifname}/flags").strip(), 16) & 1)


def route_dev(emu, node: str, dst: str) -> str:
    out = emu.node(node).cmd(f"ip -o route get {emu.address_of(dst)}")
    m = re.search(r" dev (\S+)", out)
    assert m, out
    return m.group(1)


def test_example_experiment_pings_follow_the_predicted_path(tmp_path):
    from emulator.api import open_emulation

    example = load_example()
    lines: list[str] = []
    with open_emulation(SCENARIO, duration_s=10, run_id=f"t-api-{os.getpid()}") as emu:
        res = example.experiment(emu, pings=20, say=lines.append)
        # measured (ping, median of 20) against predicted, before and after the ISL failed
        report = "\n".join(lines)
        for phase in (res.before, res.after):
            assert len(phase.rtts_ms) == 20, report
            assert within(phase.measured_ms, phase.path.rtt_ms), f"{report}\nRTTs {phase.rtts_ms}"
        assert res.after.path.nodes != res.before.path.nodes
        assert res.after.path.rtt_ms > res.before.path.rtt_ms + 1.0  # the detour is measurable
        assert res.after.measured_ms > res.before.measured_ms + 1.0, report  # and ping sees it

        # the same link failed now: down at both ends in the kernel, and the near satellite's route to the
        # destination leaves by another interface; restored: up, and the route is back
        near, far = res.failed
        link = emu.link(near, far)
        ends = emu.emulation.ends
        if_near, if_far = (ends.ifname_a[link.slot], ends.ifname_b[link.slot])
        if emu.timeline.nodes[int(emu.timeline.link_a[link.slot])].name != near:
            if_near, if_far = if_far, if_near
        assert route_dev(emu, near, "h-new-york") == if_near
        emu.fail((near, far))
        assert not flags_up(emu, near, if_near) and not flags_up(emu, far, if_far)
        assert route_dev(emu, near, "h-new-york") != if_near
        emu.restore((near, far))
        assert flags_up(emu, near, if_near) and flags_up(emu, far, if_far)
        assert route_dev(emu, near, "h-new-york") == if_near

        # a failed gateway: its host is cut off (no reply); restored, it answers again (its default route,
        # dropped by the kernel while its access link was down, is back)
        emu.fail("gs-new-york")
        assert not emu.path("h-london", "h-new-york").reachable
        assert example.ping_rtts_ms(emu, "h-london", "h-new-york", 3) == []
        emu.restore("gs-new-york")
        assert len(example.ping_rtts_ms(emu, "h-london", "h-new-york", 3)) == 3
    assert find_ours(f"t-api-{os.getpid()}") == (set(), set())


def test_an_exception_in_the_with_block_tears_everything_down():
    from emulator.api import open_emulation

    rid = f"t-api-x-{os.getpid()}"
    with pytest.raises(RuntimeError, match="script failed"):
        with open_emulation(SCENARIO, duration_s=3, run_id=rid) as emu:
            assert find_ours(rid)[1] and emu.path("h-london", "h-new-york").reachable
            raise RuntimeError("script failed")
    assert find_ours(rid) == (set(), set())


def test_ctrl_c_while_the_clock_runs_tears_everything_down():
    rid = f"t-api-c-{os.getpid()}"
    code = textwrap.dedent(f"""
        import signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        # Ctrl-C as at a terminal, even when this suite runs as a background job (SIGINT then comes in
        # ignored, and the script would ignore it too: the run ended its 30 s with exit status 0)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from emulator.api import open_emulation
        with open_emulation({str(SCENARIO)!r}, duration_s=30, run_id={rid!r}) as emu:
            print("ready", flush=True)
            emu.run()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-3000:]
        assert find_ours(rid)[1]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-3000:]
    assert find_ours(rid) == (set(), set())
