#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11, made here with debootstrap (for machines that cannot
# pull python:3.11-slim from a registry). Usage: docker/base-image.sh TAG [MIRROR]. Skips if TAG exists.
set -euo pipefail
tag=${1:?usage: docker/base-image.sh TAG [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag: present"
  exit 0
fi
root=$(mktemp -d /tmp/boneage-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "base image $tag: debootstrap bookworm from $mirror"
# python3-venv: the image's virtual environment; ca-certificates: TLS to PyPI; passwd: useradd.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd bookworm "$root" "$mirror" >/dev/null
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' - "$tag" >/dev/null
echo "base image $tag: $(docker image inspect --format '{{.Size}}' "$tag" | numfmt --to=iec) imported"
