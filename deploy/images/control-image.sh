#!/usr/bin/env bash
# Builds the control service's container image in an OCI image layout with umoci, without a
# Docker daemon: one layer holding only the static binary (no shell, no libc, nothing to
# exec into), run as an unprivileged user, port 8080. Same image as the Dockerfile at the
# repository's root.
#   control-image.sh STATIC_BINARY LAYOUT_DIR TAG     (make images; push with skopeo copy)
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 STATIC_BINARY LAYOUT_DIR TAG" >&2; exit 2; }
binary=$1 out=$2 tag=$3
rm -rf "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
image="$out:$tag"
umoci init --layout "$out"
umoci new --image "$image"
# --rootless: file ownership as recorded, whoever runs this (root or not).
umoci unpack --rootless --image "$image" "$work/bundle"
install -m 0555 "$binary" "$work/bundle/rootfs/wipgate-control"
umoci repack --image "$image" "$work/bundle"
umoci config --image "$image" \
  --os linux --architecture amd64 \
  --config.user 65532:65532 \
  --config.entrypoint /wipgate-control \
  --config.env WIPGATE_LISTEN=0.0.0.0:8080 \
  --config.exposedports 8080/tcp \
  --config.label org.opencontainers.image.title=wipgate-control
umoci gc --layout "$out"
