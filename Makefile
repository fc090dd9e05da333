# genrec — the two commands a new machine needs: `make demo` and `make test`.
# Both create the virtual environment on first use (and again whenever pyproject.toml changes).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Ray runs with token authentication (infra/ray_auth.py, SECURITY.md): a local Ray's token is generated in
# ~/.ray/auth_token. Only the tests and benchmarks set RAY_AUTH_MODE=disabled (tests/conftest.py): local clusters.
export RAY_USAGE_STATS_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test bench bench-quick venv clean help
help:
	@echo "make demo    run the main job on embedded defaults (broker, Ray, synthetic world)"
	@echo "make test    run the test suite (bootstraps $(VENV) on first use)"
	@echo "make bench   run every benchmark suite and rewrite BENCHMARKS.md"

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and alone: ==2.13.0 is the local CPU build on these machines.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/genrec demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests --ignore=tests/bench

bench: $(STAMP)
	$(BIN)/genrec bench all --write BENCHMARKS.md

bench-quick: $(STAMP)
	$(BIN)/genrec bench all --quick

clean:
	rm -rf $(VENV) build *.egg-info .genrec
