#!/usr/bin/env bash
# kubetune vs transformers' Trainer on one GPU: a 0.9 B-parameter Llama built from a config (no hub),
# bf16, sequence 2048, DeepSpeed ZeRO-2, uniform-length data; prints tokens/s, step time, peak memory
# and MFU for both and writes docs/benchmarks-gpu.json (`make bench` renders it into
# docs/benchmarks.md and the README). The Python part is bench/gpu.py, which shares bench/trainers.py
# with the CPU benchmark, so both measure the same way.
#
# Budget: under 8 minutes on one H100/H200, installs included (model built once, under a minute; then
# 2 repetitions x 2 trainers x 25 steps of 32k tokens, then kubetune once more under ZeRO-3 (the ZeRO-3
# row: sharded loading, partitioned parameters), each run about a minute with its start-up);
# the Python part is cut off at 450 s.
#
# What the GPU machine must have: Linux x86_64, an NVIDIA driver, `python3` (3.12 here; $PYTHON to
# choose another) with CUDA torch and transformers (5.17 or later; dry runs pass with 5.17.0 on
# Python 3.12 and 5.24.0 on 3.11) installed; no network. kubetune itself runs from this tree
# (PYTHONPATH, nothing installed). What else the trainer and the benchmark import and the machine
# lacks (deepspeed, hjson, pydantic and its parts, datasets, dill, multiprocess) is installed from a
# wheel folder carried along, only where missing: $KUBETUNE_WHEELS (default .cache/gpu-wheels).
# Build that folder on a machine with the package index (any Python; deepspeed's build needs torch):
#
#   bench/gpu.sh --build-wheelhouse      # wheels for CPython $GPU_PYTHON_VERSION (3.12), manylinux x86_64;
#                                        # deepspeed (an sdist) built here into a pure-Python wheel
#
# then carry .cache/gpu-wheels with the checkout and run `bench/gpu.sh` on the GPU machine. With $OUT
# set, the log (gpu.log), the results (benchmarks-gpu.json) and every run's logs (runs/) go there too.
# `bench/gpu.sh --dry-run` runs the same path with tiny sizes (on the CPU if there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -x .venv/bin/python && -z "${PYTHON:-}" ]] && PY=.venv/bin/python
WHEELS=${KUBETUNE_WHEELS:-.cache/gpu-wheels}
# import name -> distribution, for what the run needs beyond torch and transformers
NEEDED=(deepspeed:deepspeed hjson:hjson ninja:ninja cpuinfo:py-cpuinfo msgpack:msgpack einops:einops
        accelerate:accelerate datasets:datasets dill:dill multiprocess:multiprocess pyarrow:pyarrow pandas:pandas
        xxhash:xxhash fsspec:fsspec
        huggingface_hub:huggingface-hub pydantic:pydantic pydantic_core:pydantic-core annotated_types:annotated-types
        typing_inspection:typing-inspection yaml:pyyaml prometheus_client:prometheus-client psutil:psutil
        pytest:pytest pluggy:pluggy iniconfig:iniconfig peft:peft tokenizers:tokenizers safetensors:safetensors)
# The wheel folder: what the GPU machine lacks, and fallbacks it may need (datasets 5.2 wants
# huggingface-hub >= 1.31 and fsspec <= 2026.9.0; the hub 1.33 in turn newer click and hf-xet).
# Not carried, as the GPU machine has them: torch, transformers, pyarrow, pandas and the rest of NEEDED.
WHEELHOUSE=(hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
            typing-extensions==4.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
            huggingface-hub==1.33.0 hf-xet==1.8.0 click==8.5.1 fsspec==2026.9.0
            pip==26.3)  # run from its wheel where the environment has no pip (a uv-made venv)

if [[ "${1:-}" == "--build-wheelhouse" ]]; then
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-cache-dir --no-deps --no-build-isolation -w "$WHEELS" "deepspeed==0.19.8"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp \
    --python-version "${GPU_PYTHON_VERSION:-3.12}" --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$WHEELS" "${WHEELHOUSE[@]}"
  ls "$WHEELS"; du -sh "$WHEELS"; exit 0
fi

if [[ -n "${OUT:-}" && -z "${KUBETUNE_GPU_LOGGED:-}" ]]; then  # everything below also into $OUT/gpu.log
  mkdir -p "$OUT"
  set +e; KUBETUNE_GPU_LOGGED=1 bash bench/gpu.sh "$@" 2>&1 | tee -a "$OUT/gpu.log"; exit "${PIPESTATUS[0]}"
fi
"$PY" -c 'import sys, torch, transformers as t; print("python", sys.version.split()[0], sys.executable,
  "torch", torch.__version__, "transformers", t.__version__)'
find_missing() {
  "$PY" - "${NEEDED[@]}" <<'PYEOF'
import contextlib, importlib, sys
missing = []
with contextlib.redirect_stdout(sys.stderr):  # what the imports print stays out of the answer
    for pair in sys.argv[1:]:
        module, dist = pair.split(":")
        try:
            importlib.import_module(module)
        except Exception:
            missing.append(dist)
print("missing:", *missing)
PYEOF
}
read -r -a missing <<< "$(find_missing 2>/dev/null | sed -n "s/^missing: *//p")"
pip_() {
  if "$PY" -m pip --version >/dev/null 2>&1; then "$PY" -m pip "$@"
  else "$PY" "$(ls "$WHEELS"/pip-*.whl | head -1)/pip" "$@"; fi
}
SITE=$PWD/.cache/gpu-site  # used only where the environment cannot be written to
[[ -d $SITE ]] && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
if ((${#missing[@]})); then
  echo "installing from $WHEELS: ${missing[*]}"
  # With dependencies first (may upgrade the hub or fsspec from the folder); if what is installed
  # cannot satisfy them (e.g. an older pyarrow), the missing ones alone, and the hub and fsspec that
  # datasets needs to import; if the environment is read-only, into $SITE.
  install=(install -q --disable-pip-version-check --no-index --find-links "$WHEELS")
  pip_ "${install[@]}" "${missing[@]}" ||
    { echo "dependencies not satisfiable from $WHEELS and what is installed: the missing ones without them"
      pip_ "${install[@]}" --no-deps "${missing[@]}" &&
        pip_ "${install[@]}" "huggingface-hub>=1.31,<3" "fsspec>=2023.1.0,<=2026.9.0"; } ||
    { echo "cannot install into $PY's environment: into $SITE"
      pip_ "${install[@]}" --no-deps --target "$SITE" "${missing[@]}"
      export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"; }
  read -r -a still <<< "$(find_missing 2>/dev/null | sed -n "s/^missing: *//p")"
  if ((${#still[@]})); then echo "still not importable: ${still[*]}" >&2; exit 1; fi
fi
# kubetune from this tree: its three src folders (one namespace package) and the root (bench, tests)
export PYTHONPATH="$PWD:$PWD/src:$PWD/operator/src:$PWD/trainer/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import kubetune.trainer.main, bench.hf_side, deepspeed as d, datasets as s, huggingface_hub as h
print('deepspeed', d.__version__, 'datasets', s.__version__, 'huggingface_hub', h.__version__)"
"$PY" -c "import torch; assert torch.cuda.is_available() or '$*' == '--dry-run', 'no CUDA device'"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

work=$(mktemp -d "${TMPDIR:-/tmp}/kubetune-bench-gpu-XXXXXX")
keep_logs() {  # every run's logs, metrics and manifests (not the model, the data nor the exports)
  [[ -n "${OUT:-}" ]] || return 0
  mkdir -p "$OUT/runs"
  (cd "$work" && find . \( -path ./model -o -path ./data \) -prune -o -type f -size -20M \
    \( -name '*.log' -o -name '*.jsonl' -o -name 'rank*.json' -o -name '*.yaml' \) -print0 |
    xargs -0r cp --parents -t "$OUT/runs") || true
}
trap 'keep_logs; rm -rf "$work"' EXIT
results=()
[[ -n "${OUT:-}" ]] && results=(--out "$OUT/benchmarks-gpu.json")
if [[ "${1:-}" == "--dry-run" ]]; then
  "$PY" -m bench.gpu --profile quick --work "$work" "${results[@]}"
else
  timeout -k 15 450 "$PY" -m bench.gpu --profile gpu --work "$work" "${results[@]}"
fi
