#!/usr/bin/env bash
# kubetune vs transformers' Trainer on one GPU: a 0.9 B-parameter Llama built from a config (no hub),
# bf16, sequence 2048, DeepSpeed ZeRO-2, uniform-length data; prints tokens/s, step time, peak memory
# and MFU for both and writes docs/benchmarks-gpu.json (`make bench` renders it into
# docs/benchmarks.md and the README). The Python part is bench/gpu.py, which shares bench/trainers.py
# with the CPU benchmark, so both measure the same way.
#
# Budget: under 8 minutes on one H100 (model built once, about 1 minute; then 2 repetitions x 2
# trainers x 25 steps of 32k tokens, each run about 1 minute with its start-up).
#
# What the GPU machine must have: Linux x86_64, an NVIDIA driver, Python 3.11 with CUDA torch and
# transformers (>= 5.20) installed; no network. Everything else kubetune's trainer and the benchmark
# import (deepspeed and its small dependencies, datasets, accelerate, pydantic, pyyaml,
# prometheus-client, psutil, pytest — tests/support/tiny.py builds the tokenizer) is installed, only
# where missing, from a wheel folder carried along: $KUBETUNE_WHEELS (default .cache/gpu-wheels).
# Build that folder on a machine with the package index and the same Python version:
#
#   bench/gpu.sh --build-wheelhouse      # deepspeed is an sdist: built here into a pure-Python wheel
#
# then carry .cache/gpu-wheels with the checkout and run `bench/gpu.sh` on the GPU machine.
# `bench/gpu.sh --dry-run` runs the same path with tiny sizes (on the CPU if there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && PY=.venv/bin/python
WHEELS=${KUBETUNE_WHEELS:-.cache/gpu-wheels}
# import name -> distribution, for what the run needs beyond torch and transformers
NEEDED=(deepspeed:deepspeed hjson:hjson ninja:ninja cpuinfo:py-cpuinfo msgpack:msgpack einops:einops accelerate:accelerate datasets:datasets pydantic:pydantic pydantic_core:pydantic-core
        annotated_types:annotated-types typing_inspection:typing-inspection yaml:pyyaml
        prometheus_client:prometheus-client psutil:psutil pytest:pytest pluggy:pluggy iniconfig:iniconfig
        peft:peft tokenizers:tokenizers safetensors:safetensors)

if [[ "${1:-}" == "--build-wheelhouse" ]]; then
  mkdir -p "$WHEELS"
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" "deepspeed==0.19.8"
  dists=()
  for pair in "${NEEDED[@]}"; do [[ ${pair#*:} != deepspeed ]] && dists+=("${pair#*:}"); done
  dists+=(nvidia-ml-py)  # deepspeed's GPU-side dependency; installed with it where missing
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "${dists[@]}"
  # datasets' own dependencies are large (pyarrow, pandas): fetched too, used only where missing
  "$PY" -m pip download -q --only-binary=:all: -d "$WHEELS" "datasets>=5,<6" --no-deps
  "$PY" -m pip download -q --only-binary=:all: -d "$WHEELS" pyarrow dill xxhash multiprocess fsspec pandas
  du -sh "$WHEELS"; exit 0
fi

missing=()
for pair in "${NEEDED[@]}"; do
  "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
done
"$PY" -c "import deepspeed" 2>/dev/null || "$PY" -c "import pynvml" 2>/dev/null || missing+=(nvidia-ml-py)
if ((${#missing[@]})); then
  echo "installing from $WHEELS: ${missing[*]}"
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" "${missing[@]}"
fi
"$PY" -c "import kubetune.trainer" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation -e .
"$PY" -c "import torch; assert torch.cuda.is_available() or '$*' == '--dry-run', 'no CUDA device'"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

if [[ "${1:-}" == "--dry-run" ]]; then
  exec "$PY" -m bench.gpu --profile quick
fi
exec timeout 470 "$PY" -m bench.gpu --profile gpu
