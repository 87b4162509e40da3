"""Run the host's command inside the test VM (the guest side of netemvm; standard library only).

Started by the VM's /init inside the chroot of the host's root. Reads the job (argv, environment,
working directory) from a JSON file written by the host, runs argv as an argument list with exactly
that environment, and exits with the command's exit code (128 + N if signal N killed it), which /init
reports on the console.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def main(job_path: str) -> int:
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    argv = job["argv"]
    try:
        os.chdir(job["cwd"])
    except OSError as e:
        sys.stderr.write(f"satnetem-vm: cannot enter working directory {job['cwd']!r}: {e.strerror}\n")
        return 126
    try:
        proc = subprocess.run(argv, env=job["env"], stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        sys.stderr.write(f"satnetem-vm: command not found: {argv[0]!r}\n")
        return 127
    except PermissionError:
        sys.stderr.write(f"satnetem-vm: command not executable: {argv[0]!r}\n")
        return 126
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
