# `make test` and `make demo` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
LEAN := .venv-lean
STAMP := $(VENV)/.installed
# A tiny exported model (and PyTorch reference vectors) for the lean tests, which cannot export.
LEAN_ARTEFACT := build/lean-artefact
DEPS := pyproject.toml runtime/pyproject.toml export/pyproject.toml constraints.txt

.PHONY: setup test demo lint typecheck clean bench-cpu

setup: $(STAMP)

$(STAMP): $(DEPS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=25.1"
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -c constraints.txt "torch==2.13.0"
	$(PIP) install -c constraints.txt -e "runtime[server,tensorrt-rtx,bulk,ray]" -e "export[tensorrt-rtx]"
	$(PIP) install -c constraints.txt --group dev
	touch $(STAMP)

# A second environment with the runtime alone (no torch, no transformers): proves the runtime is lean.
$(LEAN)/.installed: runtime/pyproject.toml
	$(PYTHON) -m venv $(LEAN)
	$(LEAN)/bin/python -m pip --disable-pip-version-check -q install -e runtime "pytest>=8"
	touch $(LEAN)/.installed

$(LEAN_ARTEFACT)/reference.json: $(STAMP) scripts/make_test_artefact.py $(wildcard export/src/embedrt_export/*.py export/src/embedrt_export/*/*.py)
	$(PY) scripts/make_test_artefact.py $(LEAN_ARTEFACT)

# Datacenter TensorRT's Python bindings (10.x and 11.x, about 1 MB each, no -libs) with stand-in libraries
# built by the C compiler, for the contract test (tests/export/test_trt_contract.py): fetched here, during
# setup, so that nothing is downloaded at test time. The wheels are per Python version: redone with the venv.
TRT_BINDINGS := build/trt-bindings
TRT_BINDINGS_VERSIONS := 10.0.1 11.4.0.106

$(TRT_BINDINGS)/.prepared: $(STAMP) tests/export/trt_bindings.py
	rm -rf $(TRT_BINDINGS)
	$(PY) tests/export/trt_bindings.py prepare $(TRT_BINDINGS) $(TRT_BINDINGS_VERSIONS)
	touch $@

test: $(STAMP) $(LEAN)/.installed $(LEAN_ARTEFACT)/reference.json $(TRT_BINDINGS)/.prepared
	$(PY) -m ruff check runtime export tests scripts
	$(PY) -m mypy
	$(PY) -m pytest -q
	EMBEDRT_LEAN_ENV=1 EMBEDRT_LEAN_ARTEFACT=$(LEAN_ARTEFACT)/artefact \
		$(LEAN)/bin/python -m pytest -q -p no:cacheprovider tests/lean

demo: $(STAMP)
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(PY) -m ruff check runtime export tests scripts

typecheck: $(STAMP)
	$(PY) -m mypy

clean:
	rm -rf $(VENV) $(LEAN) $(PEERS) $(LEAN_ARTEFACT) $(TRT_BINDINGS) .pytest_cache

# Benchmark peers (sentence-transformers with its ONNX / dynamic INT8 exports through optimum-onnx, which
# needs transformers < 4.58): their own environment, so the project's pins and `make test` stay as they are.
PEERS := .venv-peers
PEERS_PIP := $(PEERS)/bin/python -m pip --disable-pip-version-check -q

$(PEERS)/.installed:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS_PIP) install --upgrade "pip>=25.1"
	$(PEERS_PIP) install "torch==2.13.0"
	$(PEERS_PIP) install "torch==2.13.0" "sentence-transformers[onnx]==5.7.0" "optimum-onnx[onnxruntime]==0.1.0" \
		"transformers==4.57.6" "onnxruntime==1.32.0"
	touch $@

# INT8 on CPU against sentence-transformers and transformers, side by side (docs/benchmarks.md, "CPU").
bench-cpu: $(STAMP) $(PEERS)/.installed
	$(PY) scripts/bench_cpu.py --peers-python $(PEERS)/bin/python $(BENCH_ARGS)
