#!/usr/bin/env bash
# One set-up path for satnetem on Debian/Ubuntu: system packages, then a virtual environment in .venv
# with the Python dependencies and satnetem itself. Idempotent: running it again changes nothing that
# is already in place. The Vagrant provisioner calls this same script.
#
#   sudo ./install.sh            # everything: emulator, routing daemons, netem test VM, tests
#   SATNETEM_MINIMAL=1 ./install.sh   # only the Python environment (plan/report, no root needed)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${SATNETEM_VENV:-$here/.venv}

# System packages, grouped by what needs them.
apt_packages=(
  # Python for the venv (Debian's python3 is the one Mininet's module is installed for)
  python3 python3-venv python3-dev gcc
  # the emulator: namespaces, veths, qdiscs, traffic
  mininet iproute2 iputils-ping iperf3 iptables tcpdump procps psmisc kmod
  # the userspace shaper (NFQUEUE): its compiled delay daemon, and the CPU hog of its benchmarks
  libnetfilter-queue-dev libmnl-dev stress-ng
  # routing daemons
  bird2
  # a clustered run's Ray node: the table that keeps Ray's ports to the cluster's interface (satnetem cluster start)
  nftables
  # the netem test VM: a stock distribution kernel booted under qemu (the host kernel may lack sch_netem)
  qemu-system-x86 busybox-static cpio
  # checks of the scripts, and of the lab's systemd unit (systemd-analyze verify)
  shellcheck systemd
)
# The stock kernel image package differs between distributions. Debian also ships vagrant, which the
# tests use to validate the lab's Vagrantfile (Ubuntu dropped it; there that test skips).
# shellcheck disable=SC1091
. /etc/os-release 2>/dev/null || true
case "${ID:-debian}" in
  ubuntu) apt_packages+=(linux-image-generic) ;;
  *) apt_packages+=(linux-image-amd64 vagrant) ;;
esac

say() { printf 'install.sh: %s\n' "$*"; }

missing=()
if [ -z "${SATNETEM_MINIMAL:-}" ]; then
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "these system packages are missing and installing them needs root: ${missing[*]}"
    say "run: sudo $0"
    exit 1
  fi
  say "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "system packages already installed"
fi

py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)
if [ ! -x "$venv/bin/python" ]; then
  say "creating virtual environment $venv (with system site-packages, for Debian's Mininet module)"
  "$py" -m venv --system-site-packages "$venv"
fi
stamp="$venv/.satnetem-installed"
if [ ! -f "$stamp" ] || [ "$here/setup.cfg" -nt "$stamp" ] || [ "$here/install.sh" -nt "$stamp" ]; then
  say "installing satnetem and its Python dependencies into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
  # cluster: Ray, for the several-host tests on fake hosts (tests/integration/test_cluster_ray.py)
  "$venv/bin/python" -m pip install -q -e "${here}[test,cluster]"
  touch "$stamp"
else
  say "Python environment up to date"
fi
# The compiled delay daemon of the userspace shaper, rebuilt when its source changes. The binary stays out
# of git (build/ is ignored); it is built beside and moved into place, so a running daemon is not disturbed.
delayd_src="$here/emulator/shaping/delayd.c"
delayd_bin="$here/build/satnetem-delayd"
if [ -z "${SATNETEM_MINIMAL:-}" ]; then
  if [ ! -x "$delayd_bin" ] || [ "$delayd_src" -nt "$delayd_bin" ]; then
    say "building the delay daemon $delayd_bin"
    mkdir -p "$here/build"
    gcc -O2 -g -Wall -Wextra -o "$delayd_bin.new" "$delayd_src" -lnetfilter_queue -lmnl
    mv -f "$delayd_bin.new" "$delayd_bin"
  else
    say "delay daemon up to date"
  fi
fi
# The route sender (emulator/kernel/rtsend.c), loaded by the emulator through ctypes; without it the
# routes are sent from Python (the same requests, more time per step).
rtsend_src="$here/emulator/kernel/rtsend.c"
rtsend_lib="$here/build/libsatnetem-rtsend.so"
if [ -z "${SATNETEM_MINIMAL:-}" ]; then
  if [ ! -f "$rtsend_lib" ] || [ "$rtsend_src" -nt "$rtsend_lib" ]; then
    say "building the route sender $rtsend_lib"
    mkdir -p "$here/build"
    gcc -O2 -g -Wall -Wextra -shared -fPIC -o "$rtsend_lib.new" "$rtsend_src"
    mv -f "$rtsend_lib.new" "$rtsend_lib"
  else
    say "route sender up to date"
  fi
fi
# The shortest-path trees of the route computation (routing/dijkstra.c), loaded through ctypes; without
# it routing/graph.py runs scipy's Dijkstra (the same routes, ~1.7x the time).
dijkstra_src="$here/routing/dijkstra.c"
dijkstra_lib="$here/build/libsatnetem-dijkstra.so"
if [ ! -f "$dijkstra_lib" ] || [ "$dijkstra_src" -nt "$dijkstra_lib" ]; then
  say "building the shortest-path library $dijkstra_lib"
  mkdir -p "$here/build"
  gcc -O2 -g -Wall -Wextra -shared -fPIC -pthread -o "$dijkstra_lib.new" "$dijkstra_src"
  mv -f "$dijkstra_lib.new" "$dijkstra_lib"
else
  say "shortest-path library up to date"
fi
# The compute nodes' service (one program forks a child per node). Static: a child then maps no shared
# libraries, and its RSS is ~0.7 MB instead of ~1.5 MB with the dynamic libc.
computed_src="$here/emulator/traffic/computed.c"
computed_bin="$here/build/satnetem-computed"
if [ ! -x "$computed_bin" ] || [ "$computed_src" -nt "$computed_bin" ]; then
  say "building the compute service $computed_bin"
  mkdir -p "$here/build"
  gcc -O2 -g -Wall -Wextra -static -o "$computed_bin.new" "$computed_src"
  mv -f "$computed_bin.new" "$computed_bin"
else
  say "compute service up to date"
fi
say "done: run '$venv/bin/satnetem --help'"
