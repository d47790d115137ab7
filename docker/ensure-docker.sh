#!/usr/bin/env bash
# A running Docker daemon, from Debian's packages: installs docker.io (and debootstrap, for the local
# base image) when missing, and starts dockerd when nothing answers. Idempotent; prints one line.
set -euo pipefail
SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )
missing=""
command -v dockerd >/dev/null || missing="$missing docker.io"
command -v debootstrap >/dev/null || missing="$missing debootstrap"
if [ -n "$missing" ]; then
  echo "installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if docker info >/dev/null 2>&1; then
  echo "docker: daemon running"
  exit 0
fi
log=${DOCKERD_LOG:-/tmp/boneage-dockerd.log}
echo "docker: starting dockerd (log: $log)"
$SUDO bash -c "nohup dockerd >'$log' 2>&1 &"
for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && { echo "docker: daemon running"; exit 0; }
  sleep 1
done
echo "error: dockerd did not answer within 60 s; see $log" >&2
tail -20 "$log" >&2
exit 1
