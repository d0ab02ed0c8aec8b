# whisperd: `make run` installs everything into .venv and starts the daemon; `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= config.example.yaml
UNAME  := $(shell uname -s)-$(shell uname -m)

# Linux x86-64 must take the CPU build of torch: an unpinned torch pulls a multi-GB CUDA build.
# macOS takes the standard wheel, which has MPS.
ifeq ($(UNAME),Linux-x86_64)
TORCH_SPEC ?= torch==2.13.*
else
TORCH_SPEC ?= torch
endif

# The mlx extra: on Apple silicon the engine model.engine auto picks; on Linux x86-64 MLX's CPU backend, so that
# the suite tests the MLX engine (a light install: docs/decisions.md).
ifneq ($(filter $(UNAME),Darwin-arm64 Linux-x86_64),)
EXTRAS ?= test,bench,speakers,mlx
else
EXTRAS ?= test,bench,speakers
endif

.PHONY: install run drain test test-slow bench bench-base clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH_SPEC)'
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

run: $(STAMP)
	chmod go-w $(CONFIG)
	$(BIN)/whisperd run --config $(CONFIG)

drain: $(STAMP)
	chmod go-w $(CONFIG)
	$(BIN)/whisperd run --drain --config $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-base: $(STAMP)
	$(BIN)/python -m bench.run --model base --out bench/results/latest-base.json

clean:
	rm -rf $(VENV) state inbox outbox archive failed .pytest_cache
