#!/usr/bin/env bash
# The real-cluster suite, end to end, on a throw-away kind cluster. Needs Docker, kind, kubectl, helm and
# this project's venv (`make venv`); it cannot run on the project's development machines (no container
# engine there), but any ordinary CI runner with Docker can run it:
#
#   tests/cluster/run-kind.sh            create the cluster, build and load the images, install the chart,
#                                        run the quickstart to Succeeded, then `pytest -m cluster`
#   KEEP_CLUSTER=1 tests/cluster/run-kind.sh    leave the cluster up afterwards (for debugging)
#   QUICKSTART_MODEL=tiny ...            fine-tune the tests' tiny model instead of SmolLM2-135M (faster)
#
# Steps (each one idempotent, so a re-run resumes):
#   1. kind cluster `kubetune-e2e` (one node: its local-path provisioner backs ReadWriteOnce claims, and
#      every worker pod of a job lands on that node, so they can share the claims).
#   2. images from the Dockerfile: the operator, and the trainer's CPU variant; loaded into kind.
#   3. the Helm chart, with those images, waiting for the operator to be ready.
#   4. claims `kubetune-data` (model and datasets, copied in through a loader pod) and
#      `kubetune-checkpoints`.
#   5. the quickstart, rewritten for the cluster (pvc:// paths instead of local ones), applied with
#      kubectl and waited for until Succeeded.
#   6. the pytest suite marked `cluster` (tests/cluster/), against the same cluster.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
CLUSTER="${CLUSTER:-kubetune-e2e}"
NAMESPACE="${NAMESPACE:-kubetune-e2e}"
TAG="${TAG:-e2e}"
OPERATOR_IMAGE="kubetune/operator:${TAG}"
TRAINER_IMAGE="kubetune/trainer:${TAG}-cpu"
QUICKSTART_MODEL="${QUICKSTART_MODEL:-smollm2}"
QUICKSTART_TIMEOUT="${QUICKSTART_TIMEOUT:-1800s}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
WORK="$(mktemp -d)"
export KUBECONFIG="${KUBECONFIG_OUT:-$WORK/kubeconfig}"

log() { printf '\n== %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "run-kind.sh needs '$1' on PATH" >&2; exit 2; }; }
for tool in docker kind kubectl helm; do need "$tool"; done
[ -x "$PYTHON" ] || { echo "run-kind.sh needs the project's venv: make venv" >&2; exit 2; }

cleanup() {
  local code=$?
  if [ "$code" -ne 0 ]; then
    log "failed (exit $code): cluster state"
    kubectl get finetunejobs,pods,events -A -o wide || true
    kubectl logs -n "$NAMESPACE" -l app.kubernetes.io/name=kubetune --tail=200 --prefix || true
  fi
  if [ -z "${KEEP_CLUSTER:-}" ]; then kind delete cluster --name "$CLUSTER" || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

log "1. kind cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --wait 120s
fi
kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"

log "2. images"
docker build --target operator -t "$OPERATOR_IMAGE" .
docker build --target trainer -t "$TRAINER_IMAGE" \
  --build-arg TRAINER_BASE_IMAGE=python:3.11.14-slim-bookworm \
  --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$TRAINER_IMAGE"

log "3. Helm chart"
helm upgrade --install kubetune charts/kubetune --namespace "$NAMESPACE" --create-namespace \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="$TAG" --set image.pullPolicy=Never \
  --set trainer.image.repository="${TRAINER_IMAGE%:*}" --set trainer.image.tag="${TAG}-cpu" \
  --wait --timeout 300s

log "4. claims and their contents"
kubectl apply -n "$NAMESPACE" -f - <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: kubetune-data}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 2Gi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: kubetune-checkpoints}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 5Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: kubetune-loader}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000}
  containers:
  - name: loader
    image: ${TRAINER_IMAGE}
    imagePullPolicy: Never
    command: [sleep, "3600"]
    volumeMounts:
    - {name: data, mountPath: /mnt/pvc/kubetune-data}
    - {name: checkpoints, mountPath: /mnt/pvc/kubetune-checkpoints}
  volumes:
  - {name: data, persistentVolumeClaim: {claimName: kubetune-data}}
  - {name: checkpoints, persistentVolumeClaim: {claimName: kubetune-checkpoints}}
EOF
kubectl wait -n "$NAMESPACE" --for=condition=Ready pod/kubetune-loader --timeout=300s
# the tests' tiny model (seconds to build, no download) is always loaded: tests/cluster uses it
(cd "$ROOT" && "$PYTHON" -c "from tests.support import tiny; tiny.build_tiny_model('$WORK/tiny')")
(cd "$ROOT" && "$PYTHON" -c "from tests.support import tiny; tiny.write_dataset('$WORK/tiny-data', 'prompt-completion', train=96, validation=16)")
kubectl exec -n "$NAMESPACE" kubetune-loader -- mkdir -p /mnt/pvc/kubetune-data/models /mnt/pvc/kubetune-data/data
kubectl cp -n "$NAMESPACE" "$WORK/tiny" kubetune-loader:/mnt/pvc/kubetune-data/models/tiny
kubectl cp -n "$NAMESPACE" "$WORK/tiny-data" kubetune-loader:/mnt/pvc/kubetune-data/data/tiny
kubectl cp -n "$NAMESPACE" examples/data kubetune-loader:/mnt/pvc/kubetune-data/data/quickstart
if [ "$QUICKSTART_MODEL" = smollm2 ]; then
  make .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  kubectl cp -n "$NAMESPACE" .cache/models/smollm2 kubetune-loader:/mnt/pvc/kubetune-data/models/smollm2
fi
# the claims are ReadWriteOnce: the loader leaves before any trainer mounts them
kubectl delete -n "$NAMESPACE" pod/kubetune-loader --wait=true

log "5. the quickstart"
"$PYTHON" - "$QUICKSTART_MODEL" > "$WORK/quickstart.yaml" <<'EOF'
import sys, yaml
model = sys.argv[1]
job = yaml.safe_load(open("examples/quickstart.yaml"))
spec = job["spec"]
if model == "tiny":
    spec["model"] = {"source": "pvc://kubetune-data/models/tiny"}
    spec["dataset"]["format"] = "auto"
    spec["evaluation"]["compareBaseModel"] = False
else:
    spec["model"]["source"] = "pvc://kubetune-data/models/smollm2"
spec["dataset"]["train"] = "pvc://kubetune-data/data/quickstart/train.jsonl"
spec["dataset"]["validation"] = "pvc://kubetune-data/data/quickstart/validation.jsonl"
spec["storage"] = {"checkpoints": "pvc://kubetune-checkpoints/quickstart"}
spec["retryPolicy"] = {"backoffSeconds": 5}
print(yaml.safe_dump(job, sort_keys=False))
EOF
kubectl apply -n "$NAMESPACE" -f "$WORK/quickstart.yaml"
kubectl wait -n "$NAMESPACE" ftj/quickstart --for=jsonpath='{.status.phase}'=Succeeded --timeout="$QUICKSTART_TIMEOUT"
kubectl get -n "$NAMESPACE" ftj/quickstart -o yaml

log "6. pytest -m cluster"
KUBETUNE_CLUSTER_TESTS=1 KUBETUNE_CLUSTER_NAMESPACE="$NAMESPACE" \
  "$ROOT/.venv/bin/pytest" -m cluster tests/cluster -v -p no:cacheprovider "$@"
