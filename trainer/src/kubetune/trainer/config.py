"""The trainer's view of a FineTuneJob: the validated manifest plus where everything lives on disk.

The manifest is the same document the user submitted (the operator passes it as a file from the job's
ConfigMap), validated with the same pydantic models as `kubetune validate`. Paths in it take three
forms, resolved here and nowhere else:

- `pvc://claim/path`: the operator mounts claim `claim` at `$KUBETUNE_PVC_ROOT/claim` (default
  `/mnt/pvc/claim`), so the file is `$KUBETUNE_PVC_ROOT/claim/path`. The operator may instead pass
  already-rewritten local paths (e.g. with --checkpoint-dir / --output-dir); both work.
- a relative local path: relative to the manifest's folder (as in the examples), so `kubetune run`
  works from any current directory.
- an absolute local path: used as is.

Checkpoints go to --checkpoint-dir, else `storage.checkpoints`, else `<workdir>/checkpoints`; the
exported model to --output-dir, else `storage.output`, else `output/` beside the step folders in the
checkpoint directory when `storage.checkpoints` is set, else `<workdir>/output`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kubetune.api.invocation import PVC_ROOT_ENV, TrainerInvocation
from kubetune.api.job import FineTuneJob
from kubetune.api.validation import ManifestError, read_documents
from kubetune.trainer.errors import ConfigError

#: Where the operator mounts PersistentVolumeClaims in a trainer pod: one folder per claim.
DEFAULT_PVC_ROOT = "/mnt/pvc"


@dataclass(frozen=True)
class RunPaths:
    """Folders a run reads and writes."""

    manifest: Path
    """The FineTuneJob manifest file."""
    workdir: Path
    """Rank 0's progress.json, metrics.jsonl, result.json and data report."""
    checkpoints: Path
    """step-NNNNNNNN checkpoint folders and the `latest` / `best` pointers."""
    output: Path
    """The exported model (safetensors + tokenizer)."""


def resolve_path(value: str, base: Path) -> Path:
    """A manifest path as a local path: pvc:// through the mount root, relative to `base`."""
    if value.startswith("pvc://"):
        claim, _, rest = value.removeprefix("pvc://").partition("/")
        return Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT)) / claim / rest
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def load_job(path: str) -> FineTuneJob:
    """The FineTuneJob in `path` (the first FineTuneJob document), validated; ConfigError otherwise."""
    from pydantic import ValidationError

    try:
        documents = list(read_documents(path))
    except ManifestError as error:
        raise ConfigError(str(error)) from error
    for document in documents:
        if isinstance(document.content, dict) and document.content.get("kind") == "FineTuneJob":
            try:
                return FineTuneJob.model_validate(document.content)
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise ConfigError(f"{path}: {where}: {first['msg']} ({error.error_count()} problem(s))") from error
    raise ConfigError(f"{path}: no FineTuneJob document found")


def run_paths(args: TrainerInvocation, job: FineTuneJob) -> RunPaths:
    """Where this run reads and writes, from the command line and the manifest's `storage` block."""
    manifest = Path(args.config).resolve()
    workdir = Path(args.workdir).resolve()
    storage = job.spec.storage
    if args.checkpoint_dir:
        checkpoints = Path(args.checkpoint_dir).resolve()
    elif storage.checkpoints:
        checkpoints = resolve_path(storage.checkpoints, manifest.parent)
    else:
        checkpoints = workdir / "checkpoints"
    if args.output_dir:
        output = Path(args.output_dir).resolve()
    elif storage.output:
        output = resolve_path(storage.output, manifest.parent)
    elif storage.checkpoints:
        output = checkpoints / "output"
    else:
        output = workdir / "output"
    return RunPaths(manifest=manifest, workdir=workdir, checkpoints=checkpoints, output=output)
