# The two commands the README opens with: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?= --budget latency=0.75 --output unast-out

.PHONY: install demo smoke test test-fast clean

install: $(VENV)/.installed

# torch 2.13.0 first: on the reference machine it is a local CPU build (a plain `torch` would pull
# a multi-GB CUDA build); elsewhere any torch in the supported range will do.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0" || $(BIN)/pip install --quiet "torch>=2.4,<2.15"
	$(BIN)/pip install --quiet -e ".[dev]"
	# DeepSpeed is an sdist whose isolated build would fetch another torch: build it against ours.
	$(BIN)/pip install --quiet --no-build-isolation "deepspeed>=0.16"
	touch $@

demo: install
	$(BIN)/unast run $(ARGS)

smoke: install
	$(BIN)/unast run --preset smoke --output unast-smoke

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

clean:
	rm -rf $(VENV) unast-out unast-smoke .unast
