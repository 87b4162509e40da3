#!/usr/bin/env bash
# Provisioner of one host of the multi-machine lab (issue 13): after provision.sh has installed satnetem,
# give the lab interface an MTU of 1550 (a VXLAN link keeps 1500 inside), sync the clock to the head (chrony)
# and start this host's Ray node as a systemd service that runs `satnetem cluster start` (token
# authentication, no dashboard, Ray's ports reachable on the lab's private network only, the resource
# satnetem-host-<H>).
#
#   cluster.sh head   NODE_IP HEAD_IP 0
#   cluster.sh worker NODE_IP HEAD_IP H
#
# The token is /home/vagrant/satnetem/vagrant/.cluster/token, written by the Vagrantfile on the host (mode
# 0600, never in git); it is copied to /etc/satnetem/ray-token (root only). Safe to run again.
#
# The tests run it on the fake hosts of one machine (tests/integration/test_cluster_ray.py), which share that
# machine's file system and have no service manager of their own: SATNETEM_LAB_TOKEN names the token,
# SATNETEM_LAB_ETC the folder standing for /etc, and SATNETEM_LAB_SERVICES=files writes chrony's and systemd's
# files there as for a lab host and starts nothing (the test checks the unit with systemd-analyze and runs its
# commands as systemd would); =none starts the node with `satnetem cluster start` directly and writes neither.
set -euo pipefail

role=${1:?role: head or worker}
node_ip=${2:?node address}
head_ip=${3:?head address}
host=${4:?host number}
venv=${SATNETEM_VENV:-/opt/satnetem-venv}
token_src=${SATNETEM_LAB_TOKEN:-/home/vagrant/satnetem/vagrant/.cluster/token}
etc=${SATNETEM_LAB_ETC:-/etc}
services=${SATNETEM_LAB_SERVICES:-systemd}
port=6379

case "$services" in systemd|files|none) ;; *) echo "cluster.sh: SATNETEM_LAB_SERVICES must be systemd, files or none, got '$services'" >&2; exit 2 ;; esac
case "$role" in head|worker) ;; *) echo "cluster.sh: role must be head or worker, got '$role'" >&2; exit 2 ;; esac
case "$host" in ''|*[!0-9]*) echo "cluster.sh: host number must be an integer, got '$host'" >&2; exit 2 ;; esac
for a in "$node_ip" "$head_ip"; do
  if ! [[ "$a" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]; then
    echo "cluster.sh: '$a' is not an IPv4 address" >&2
    exit 2
  fi
done
if [ ! -s "$token_src" ]; then
  echo "cluster.sh: $token_src is missing: the Vagrantfile writes it on 'vagrant up'" >&2
  exit 1
fi

install -d -m 0700 "$etc/satnetem"
install -m 0600 "$token_src" "$etc/satnetem/ray-token"

# The lab's interface: the one holding this host's address. VXLAN adds 50 bytes to each frame.
iface=$(ip -o -4 addr show | awk -v a="$node_ip" '{split($4, p, "/"); if (p[1] == a) print $2}')
if [ -z "$iface" ]; then
  echo "cluster.sh: no interface has $node_ip" >&2
  exit 1
fi
ip link set dev "$iface" mtu 1550

if [ "$role" = head ]; then
  who=(--head)
else
  who=(--join "${head_ip}:${port}" --host "${host}")
fi
if [ "$services" = none ]; then
  # no service manager (the fake hosts): no clock to sync (they share one), the node started directly
  "$venv/bin/satnetem" cluster start --address "$node_ip" --token "$etc/satnetem/ray-token" "${who[@]}"
  echo "cluster.sh: host ${host} (${role}, ${node_ip}) runs Ray; the head is ${head_ip}:${port}"
  exit 0
fi

# One clock: the workers follow the head, which serves the lab's network (the run refuses a host more than
# [cluster] max_clock_offset_ms, default 5 ms, off the driver's clock).
if [ "$services" = systemd ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chrony >/dev/null
fi
install -d "$etc/chrony/conf.d" "$etc/systemd/system"
subnet="${head_ip%.*}.0/24"
if [ "$role" = head ]; then
  printf 'allow %s\nlocal stratum 10\n' "$subnet" > "$etc/chrony/conf.d/satnetem.conf"
else
  printf 'server %s iburst prefer\n' "$head_ip" > "$etc/chrony/conf.d/satnetem.conf"
fi
if [ "$services" = systemd ]; then
  systemctl restart chrony
fi

# Ray's node, started by satnetem with the settings the tests run on the fake hosts (emulator/cluster/raynode.py:
# token authentication, no CPU reserved, no dashboard, a small object store, Ray's memory monitor off, every port
# fixed) and the nft table that keeps Ray's ports to this lab interface and lo (Ray listens on every address).
{
  echo "[Unit]"
  echo "Description=Ray node of the satnetem lab (host ${host}, ${role})"
  echo "After=network-online.target chrony.service"
  echo "Wants=network-online.target"
  echo "[Service]"
  printf 'ExecStart=%s/bin/satnetem cluster start --block --address %s --token %s/satnetem/ray-token' \
    "$venv" "$node_ip" "$etc"
  for a in "${who[@]}"; do printf " '%s'" "$a"; done
  echo
  printf 'ExecStopPost=%s/bin/satnetem cluster stop --address %s\n' "$venv" "$node_ip"
  echo "Restart=on-failure"
  echo "[Install]"
  echo "WantedBy=multi-user.target"
} > "$etc/systemd/system/satnetem-ray.service"
if [ "$services" = files ]; then
  echo "cluster.sh: host ${host} (${role}, ${node_ip}): wrote $etc/chrony/conf.d/satnetem.conf and $etc/systemd/system/satnetem-ray.service; nothing started"
  exit 0
fi
systemctl daemon-reload
systemctl enable satnetem-ray.service >/dev/null
systemctl restart satnetem-ray.service
echo "cluster.sh: host ${host} (${role}, ${node_ip}) runs Ray; the head is ${head_ip}:${port}"
