# dhgen developer entry points. `make demo` and `make test` install into ./.venv first when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch: the CUDA build where an NVIDIA driver is present, else the pinned CPU build. Override: make TORCH_SPEC=...
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
PYTEST_ARGS ?=
# Extras besides dev (which includes ray already): make install EXTRAS=ray installs exactly what a user of
# `pip install "dhgen[ray]"` gets, plus the dev tools. Changing EXTRAS on an existing venv: make clean first.
EXTRAS ?=
comma := ,
PIP_EXTRAS := dev$(if $(EXTRAS),$(comma)$(EXTRAS))

.PHONY: install demo test bench lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(PIP_EXTRAS)]"
	touch $@

demo: install
	$(BIN)/dhgen render examples/manifest.csv --out renders/demo

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/cpu.py  # includes the Ray section (--only ray for it alone)

lint: install
	$(BIN)/ruff check dhgen tests benchmarks tools
	$(BIN)/ruff format --check dhgen tests benchmarks tools

format: install
	$(BIN)/ruff format dhgen tests benchmarks tools

clean:
	rm -rf $(VENV) renders .pytest_cache
