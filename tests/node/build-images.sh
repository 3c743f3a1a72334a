#!/usr/bin/env bash
# Builds the project's images from its Dockerfile with BuildKit, with no registry anywhere (issue 20):
#
#   tests/node/build-images.sh TARGET...     (make images; TARGET: operator, trainer, pause)
#
# - BuildKit's daemon and client come from its Go module (make buildkit, tests/node/buildkit). The daemon
#   runs for this script only, as root, with its own state under .cache/buildkit (its build cache: a
#   rebuild after a code change reuses every layer before it), host networking for pip, and is stopped
#   by PID when the script ends, however it ends.
# - The Python base image the Dockerfile names (PYTHON_IMAGE) cannot be pulled: it is replaced by a
#   Debian bookworm made with debootstrap (python3 with its headers, venv, pip; a `python` link), given to the build as a
#   named context from an OCI layout. Built once per BASE_RECIPE and kept in .cache/images/base.
# - Where pip reaches the index through a TLS-intercepting proxy, the machine's CA bundle and a pip
#   configuration pointing at it are passed as build secrets (the Dockerfile mounts them only while pip
#   runs, so no image keeps them).
# - `pause`, the pod sandbox a node's containerd starts every pod from, is tests/node/pause built static with
#   Go, in an image named registry.k8s.io/pause:3.6 (the name containerd asks for; it is never pulled).
# - Each image is written as an OCI archive, .cache/images/TARGET.tar, named ghcr.io/kubetune/TARGET:0.1.0
#   (the chart's default), for `ctr -n k8s.io images import`. A build that fails leaves the earlier
#   archive in place.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILDKIT=${BUILDKIT_DIR:-$ROOT/.cache/buildkit}
IMAGES=${IMAGES_DIR:-$ROOT/.cache/images}
VERSION=0.1.0
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
#: Changing the recipe of the base (packages, fix-ups below) changes this, and the base is made again.
BASE_RECIPE="bookworm-minbase-python3-venv-pip-dev-2"
BASE_NAME=python:3.11.14-slim-bookworm
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

die() { echo "build-images: $*" >&2; exit 1; }
say() { echo "build-images: $*" >&2; }

[ $# -gt 0 ] || die "name the targets to build (operator, trainer, pause)"
for target in "$@"; do
  case $target in operator|trainer|pause) ;; *) die "unknown target '$target': choose operator, trainer (the Dockerfile's targets) or pause" ;; esac
done
[ "$(id -u)" = 0 ] || die "BuildKit's daemon and debootstrap need root (run make images as root)"
[ -x "$BUILDKIT/buildkitd" ] && [ -x "$BUILDKIT/buildctl" ] || die "no BuildKit in $BUILDKIT: run make buildkit"
command -v runc >/dev/null || die "BuildKit runs build steps with runc: install it (apt-get install runc)"
mkdir -p "$IMAGES"
WORK=$(mktemp -d "$IMAGES/.work.XXXXXX")
DAEMON=""
cleanup() {
  if [ -n "$DAEMON" ] && kill -0 "$DAEMON" 2>/dev/null; then
    kill "$DAEMON" && wait "$DAEMON" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

SOCKET="unix://$BUILDKIT/buildkitd.sock"
start_daemon() {
  mkdir -p "$BUILDKIT/state"
  "$BUILDKIT/buildkitd" --root "$BUILDKIT/state" --addr "$SOCKET" --oci-worker=true --containerd-worker=false \
    --oci-worker-net=host --oci-worker-gc-keepstorage=20000 >"$BUILDKIT/buildkitd.log" 2>&1 &
  DAEMON=$!
  for _ in $(seq 1 300); do
    "$BUILDKIT/buildctl" --addr "$SOCKET" debug workers >/dev/null 2>&1 && return 0
    kill -0 "$DAEMON" 2>/dev/null || die "buildkitd exited at start: see $BUILDKIT/buildkitd.log"
    sleep 0.1
  done
  die "buildkitd did not answer within 30 s: see $BUILDKIT/buildkitd.log"
}

buildctl() { "$BUILDKIT/buildctl" --addr "$SOCKET" "$@"; }

# An OCI layout directory from an OCI archive.
unpack_layout() {
  local archive=$1 layout=$2
  rm -rf "$layout" && mkdir -p "$layout" && tar -xf "$archive" -C "$layout"
}

# The digest of an OCI layout's (only) manifest.
layout_digest() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$1/index.json"
}

make_base() {
  local stamp=$IMAGES/base/.recipe
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$BASE_RECIPE" ]; then return 0; fi
  command -v debootstrap >/dev/null || die "the base image is made with debootstrap: install it (apt-get install debootstrap)"
  say "making the base with debootstrap (about a minute)"
  local rootfs=$WORK/rootfs began=$SECONDS
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python3-dev bookworm "$rootfs" "$DEBIAN_MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  # What an official Python image has and a Debian system lacks: `python`, and pip allowed to install
  # (PEP 668's marker; the images install into a venv anyway).
  ln -sf python3 "$rootfs/usr/bin/python"
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  rm -rf "$rootfs"/dev/* "$rootfs"/proc/* "$rootfs"/sys/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  printf 'FROM scratch\nCOPY . /\nENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8\nCMD ["python3"]\n' \
    >"$WORK/Dockerfile.base"
  buildctl build --frontend dockerfile.v0 --local context="$rootfs" --local dockerfile="$WORK" \
    --opt filename=Dockerfile.base --output "type=oci,dest=$WORK/base.tar,name=kubetune-base:$BASE_RECIPE"
  [ -s "$WORK/base.tar" ] || die "BuildKit wrote no base archive: see the build output above"
  unpack_layout "$WORK/base.tar" "$WORK/base"
  rm -rf "$IMAGES/base" && mv "$WORK/base" "$IMAGES/base" && echo "$BASE_RECIPE" >"$stamp"
  say "base made in $((SECONDS - began)) s"
}

build_target() {
  local target=$1 digest began=$SECONDS
  digest=$(layout_digest "$IMAGES/base")
  local secrets=()
  if [ -f "$CA_BUNDLE" ]; then
    printf '[global]\ncert = /run/secrets/pip-ca\n' >"$WORK/pip.conf"
    secrets=(--secret "id=pip-ca,src=$CA_BUNDLE" --secret "id=pip-conf,src=$WORK/pip.conf")
  fi
  # The base is named by the build argument too, so that the named context always replaces it (a Dockerfile
  # whose default names another tag would otherwise be pulled).
  local args=(--opt "build-arg:PYTHON_IMAGE=$BASE_NAME")
  if [ "$target" = trainer ]; then  # the CPU trainer: the same base, torch from the package index
    args+=(--opt "build-arg:TRAINER_BASE_IMAGE=$BASE_NAME" --opt "build-arg:TORCH_INDEX_URL=https://pypi.org/simple" \
      --opt "build-arg:TRAINER_ACCELERATOR=cpu")
  fi
  say "building $target"
  buildctl build --frontend dockerfile.v0 --local context="$ROOT" --local dockerfile="$ROOT" --opt target="$target" \
    --opt "context:$BASE_NAME=oci-layout://kubetune-base@$digest" --oci-layout "kubetune-base=$IMAGES/base" \
    "${secrets[@]}" "${args[@]}" \
    --output "type=oci,dest=$WORK/$target.tar,name=ghcr.io/kubetune/$target:$VERSION"
  mv "$WORK/$target.tar" "$IMAGES/$target.tar"
  say "$target built in $((SECONDS - began)) s: $IMAGES/$target.tar ($(du -h "$IMAGES/$target.tar" | cut -f1))"
}

build_pause() {
  local began=$SECONDS
  command -v go >/dev/null || die "the pause image is built from tests/node/pause with Go"
  mkdir -p "$WORK/pause"
  (cd "$ROOT/tests/node/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$WORK/pause/pause" .)
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$WORK/pause/Dockerfile"
  buildctl build --frontend dockerfile.v0 --local context="$WORK/pause" --local dockerfile="$WORK/pause" \
    --output "type=oci,dest=$WORK/pause.tar,name=registry.k8s.io/pause:3.6"
  mv "$WORK/pause.tar" "$IMAGES/pause.tar"
  say "pause built in $((SECONDS - began)) s: $IMAGES/pause.tar"
}

start_daemon
for target in "$@"; do
  case $target in
    pause) build_pause ;;
    *)
      make_base  # (not `make_base && ...`: that would turn off `set -e` inside it)
      build_target "$target"
      ;;
  esac
done
