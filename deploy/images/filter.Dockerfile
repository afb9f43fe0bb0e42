# The filter as a Wasm image for those who build with Docker, after `make filter`:
#   docker build -f deploy/images/filter.Dockerfile -t REGISTRY/wipgate-filter:VERSION \
#     target/wasm32-wasip1/release
# This is the *compat* variant of the Wasm image spec (one ordinary layer holding
# plugin.wasm), which Istio's WasmPlugin also pulls; its layer is a tarball, so its digest is
# not the module's sha256. `make images` builds the *oci* variant, whose layer is the module.
FROM scratch
COPY wipgate_filter.wasm /plugin.wasm
