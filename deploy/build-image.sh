#!/usr/bin/env bash
# Build the image from the Dockerfile without a Docker engine or a registry, from Debian's packages:
# for a builder without Docker or without access to a registry (air-gapped), and for the image
# test (tests/bookworm_scheduler/test_image.py). As root, on Debian 12 with mmdebstrap, podman and
# buildah installed; run it from the folder that holds the Dockerfile.
#
#   deploy/build-image.sh [TAG]      # default bookworm-scheduler:local
#
# 1. The Dockerfile's base image (FROM), when local storage has none: a Debian bookworm root file
#    system made by mmdebstrap from this machine's apt sources (DEBIAN_SOURCES to name another
#    file), with python3 and pip, and without the EXTERNALLY-MANAGED marker (the official Python
#    images have none), imported under that name by podman.
# 2. buildah builds the Dockerfile as it is, in the docker format (which keeps the HEALTHCHECK),
#    with chroot isolation and the host's network. The machine's CA bundle (SSL_CERT_FILE) is
#    bound over the image's own while the build runs, for pip to reach its index through a proxy
#    of this network's; the image keeps its own bundle, and no pip configuration is bound in.
set -euo pipefail

tag=${1:-bookworm-scheduler:local}
base=$(awk 'toupper($1) == "FROM" { print $2; exit }' Dockerfile)
sources=${DEBIAN_SOURCES:-}
if [ -z "$sources" ]; then
    for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        if [ -s "$candidate" ]; then sources=$candidate; break; fi
    done
fi
ca_bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}

if ! podman image exists "$base"; then
    rootfs=$(mktemp --suffix=.tar)
    trap 'rm -f "$rootfs"' EXIT
    mmdebstrap --quiet --variant=minbase \
        --include=python3,python3-pip,python-is-python3,ca-certificates \
        --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
        bookworm "$rootfs" ${sources:+"$sources"}
    podman import --quiet "$rootfs" "$base" >/dev/null
fi

mounts=()
if [ -s "$ca_bundle" ]; then
    mounts+=(--volume "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro")
fi
buildah bud --quiet --format docker --isolation chroot --network host --pull-never \
    "${mounts[@]}" --tag "$tag" .
