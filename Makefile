# Two commands for a fresh machine: `make demo` and `make test` (see README.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
DEMO_DIR ?= build/demo
CHROMIUM ?= /usr/bin/chromium

.PHONY: install demo test lint app network-demo container-demo bench browser clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the CPU wheel on this machine; the project's range then installs nothing more.
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	# the ray extra too: its test (--backend ray on a local Ray instance) runs in CI
	$(BIN)/pip install -q -e '.[dev,app,ray]'
	touch $(STAMP)

install: $(STAMP)

# The clinician app's end-to-end test drives Debian's Chromium (never a downloaded browser).
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: $(CHROMIUM) missing and not root: the browser test will be skipped"; fi; }

demo: $(STAMP)
	$(BIN)/ecl-sim --out $(DEMO_DIR)

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

app: $(STAMP)
	$(BIN)/ecl-app --results $(DEMO_DIR)/results.sqlite --dicom-dir $(DEMO_DIR)/data

network-demo: $(STAMP)
	bash scripts/network_demo.sh

container-demo: $(STAMP)
	bash scripts/container_3_nodes.sh

bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_data
	$(BIN)/python -m benchmarks.bench_consensus
	$(BIN)/python -m benchmarks.bench_sim
	$(BIN)/python -m benchmarks.bench_grpc
	$(BIN)/python -m benchmarks.bench_node
	$(BIN)/python -m benchmarks.bench_privacy
	$(BIN)/python -m benchmarks.bench_review

clean:
	rm -rf build .pytest_cache
