#!/usr/bin/env bash
# Packs the filter module as a Wasm OCI image in an OCI image layout, the *oci* variant of
# the Wasm image spec that Istio's WasmPlugin pulls: the module itself, unchanged, is the
# content layer (application/vnd.module.wasm.content.layer.v1+wasm), so that layer's digest
# is the module's sha256; Istio also wants the runtime config as a second layer
# (application/vnd.module.wasm.config.v1+json, root_ids). No timestamps: the same module
# gives the same manifest digest, which is what a WasmPlugin's `sha256` pins for oci:// URLs.
#   filter-oci.sh MODULE.wasm LAYOUT_DIR TAG     (make images; push with skopeo copy)
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 MODULE.wasm LAYOUT_DIR TAG" >&2; exit 2; }
module=$1 out=$2 tag=$3
rm -rf "$out"
mkdir -p "$out/blobs/sha256"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# blob FILE MEDIA_TYPE [EXTRA_JSON]: stores FILE under its digest, prints its descriptor.
blob() {
  local digest size
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  cp "$1" "$out/blobs/sha256/$digest"
  printf '{"mediaType":"%s","digest":"sha256:%s","size":%s%s}' "$2" "$digest" "$size" "${3:-}"
}
title() { printf ',"annotations":{"org.opencontainers.image.title":"%s"}' "$1"; }

printf '{"type":"envoy_proxy","abi_version":"proxy_abi_version_0_2_1","config":{"root_ids":["wipgate"]}}' \
  > "$work/runtime-config.json"
config=$(blob "$work/runtime-config.json" application/vnd.module.wasm.config.v1+json)
config_layer=$(blob "$work/runtime-config.json" application/vnd.module.wasm.config.v1+json "$(title runtime-config.json)")
module_layer=$(blob "$module" application/vnd.module.wasm.content.layer.v1+wasm "$(title plugin.wasm)")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s,%s]}' \
  "$config" "$config_layer" "$module_layer" > "$work/manifest.json"
manifest=$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json \
  ",\"annotations\":{\"org.opencontainers.image.ref.name\":\"$tag\"}")
printf '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
printf '{"schemaVersion":2,"manifests":[%s]}' "$manifest" > "$out/index.json"
echo "$manifest" | sed 's/.*"digest":"sha256:\([0-9a-f]*\)".*/\1/'
