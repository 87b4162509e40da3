"""Run timing-sensitive tests many times in a row with a CPU hog beside them; print how many passed.

    sudo .venv/bin/python bench/under_hog.py                       # 20 rounds of the default selection
    sudo .venv/bin/python bench/under_hog.py --rounds 5 -k "wire or prediction"

The hog is two ``stress-ng --cpu 1`` processes at nice 0, started in this script's own session and killed
when it ends (also on Ctrl-C), as issue 12 asks. Each round runs pytest once on the selection
(``--tests``, ``-k``); a failed round's failing test ids are printed. Nothing is retried: a round that
fails counts as failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = ("tests/integration/test_network.py", "tests/integration/test_shaping.py")
DEFAULT_K = "prediction or userspace or wire or stamping"


def start_hog(n: int) -> list[subprocess.Popen[bytes]]:
    """``n`` single-worker stress-ng CPU hogs at nice 0."""
    exe = shutil.which("stress-ng")
    if exe is None:
        sys.exit("under_hog: stress-ng not found (apt install stress-ng)")
    return [subprocess.Popen([exe, "--cpu", "1", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(n)]


def stop_hog(hogs: list[subprocess.Popen[bytes]]) -> None:
    for p in hogs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)  # stress-ng stops its workers on SIGINT
    for p in hogs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_round(k: str, tests: list[str]) -> subprocess.CompletedProcess[str]:
    """One pytest run. Interrupted, the round gets SIGINT and up to 60 s to tear its namespaces down."""
    p = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", k, *tests],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate()
    except BaseException:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        raise
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS))
    ap.add_argument("-k", default=DEFAULT_K, help="pytest -k expression")
    ap.add_argument("--hogs", type=int, default=2, help="stress-ng --cpu 1 processes beside the tests")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("under_hog needs root (the tests build network namespaces)")
    if args.rounds < 1:
        sys.exit("under_hog: --rounds must be >= 1")
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, kernel {platform.release()}")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    # Ctrl-C and kill end the rounds with the hogs stopped: SIGINT may come in ignored (a background job
    # of a non-interactive shell), and Python's default SIGTERM ends without running the finally below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    hogs = start_hog(args.hogs)
    passed = 0
    try:
        for k in range(1, args.rounds + 1):
            t0 = time.monotonic()
            r = run_round(args.k, args.tests)
            tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "(no output)"
            failed = re.findall(r"^FAILED (\S+)", r.stdout, re.M)
            passed += r.returncode == 0
            print(f"round {k}: {'pass' if r.returncode == 0 else 'FAIL'} in {time.monotonic() - t0:.0f} s: {tail}",
                  flush=True)
            for f in failed:
                print(f"    failed: {f}")
            for line in re.findall(r"^E {2,}(?:Assertion|assert).*$", r.stdout, re.M)[:4]:
                print(f"      {line[:300]}")
    finally:
        stop_hog(hogs)
    print(f"{passed} of {args.rounds} rounds passed with {args.hogs} CPU hog(s) beside them")
    return 0 if passed == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
