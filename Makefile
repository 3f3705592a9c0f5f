# The two commands the README opens with: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?= --budget latency=0.75 --output unast-out
WHEELS ?= $(HOME)/.cache/unast/wheels
# llama.cpp's ISA follows this CPU: AVX-512 where it has it, else AVX2 (a wheel built for AVX-512 dies with
# "Illegal instruction" on a CPU without it, such as a 2-core AMD EPYC seen here). Each ISA has its own wheel cache.
LLAMA_ISA   ?= $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && echo avx512 || echo avx2)
LLAMA_avx2  := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_avx512 := $(LLAMA_avx2) -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
LLAMA_CMAKE ?= $(LLAMA_$(LLAMA_ISA))
LLAMA_WHEELS := $(WHEELS)/llama-cpp-$(LLAMA_ISA)

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
	$(BIN)/pip install --quiet -e ".[eval]"
	# llama.cpp from its sdist (~5 CPU-minutes), built once per ISA into $(LLAMA_WHEELS) and reused. ggml's native
	# build picks the AMX backend, which segfaults on the first eval on the reference machine: name the ISA.
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/pip wheel --quiet --no-cache-dir --no-deps --find-links $(LLAMA_WHEELS) -w $(LLAMA_WHEELS) \
		"llama-cpp-python==0.3.36"
	$(BIN)/pip install --quiet --find-links $(LLAMA_WHEELS) -e ".[llamacpp]"
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
