"""A GGUF model converted once per job, not once per rank and attempt.

transformers reads a GGUF file by parsing it and de-quantizing every tensor on the CPU, and builds the
tokenizer from the file's vocabulary: measured on the real node (docs/benchmarks.md, section 5), that
was 20 s of model load and most of the 6 s before the data of every rank's start-up with the
quickstart's SmolLM2-135M, paid again by every rank at every restart while the rest of the gang waited.
So rank 0 converts the file once, into an ordinary safetensors folder (weights in the job's dtype, config,
tokenizer) beside the checkpoints, and every rank of this and every later attempt loads that folder.

- The folder is named by the source file's identity (name, size, modification time), the dtype and the
  transformers version, so a changed file or dtype is converted again, never read stale.
- It is written to `.partial-converted-...` and renamed into place complete, after the attempt's fence
  allows the write (kubetune.trainer.fencing); a rename that finds the folder already there (another
  attempt got there first) leaves theirs. A partial folder left by a killed attempt is removed by the
  next conversion, under the fence, as incomplete checkpoints are.
- Ranks that cannot see rank 0's folder (a node-local checkpoint volume) convert the file themselves, as
  before, and so do all ranks when the folder cannot be written (a full disk): never slower than without
  the cache.
- The folder holds the weights de-quantized, in the job's dtype (a 7B model in bf16: about 14 GB beside
  its 4 GB Q4 file), for as long as the checkpoint folder lives: checkpoint retention (`keep`) does not
  count or remove it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from kubetune.api.training import ModelSpec
from kubetune.trainer import distributed
from kubetune.trainer.errors import ModelError
from kubetune.trainer.fencing import Fence
from kubetune.trainer.model import forget_gguf_quantization, source_and_options

log = logging.getLogger(__name__)

PREFIX = "converted-gguf-"
PARTIAL_PREFIX = ".partial-converted-gguf-"
#: Written last into a converted folder: what it was converted from.
MARKER = "kubetune-converted.json"


def identity(gguf: Path, dtype_name: str) -> dict[str, Any]:
    """What a conversion depends on."""
    import transformers

    stat = gguf.stat()
    return {"file": gguf.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "dtype": dtype_name,
            "transformers": transformers.__version__}  # fmt: skip


def folder_name(source: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    return PREFIX + digest


def converted(
    spec: ModelSpec, base: Path, checkpoints: Path, dtype: Any, rank: distributed.Rank, fence: Fence
) -> ModelSpec:
    """`spec` itself unless it names a local GGUF file; else the spec of its converted folder (made now by
    rank 0 when missing), or `spec` itself where that folder cannot be seen. Call on every rank."""
    if not spec.gguf_file or spec.source.startswith("hf://"):
        return spec
    source, _ = source_and_options(spec, base)
    gguf = Path(source) / spec.gguf_file
    if not gguf.is_file():
        return spec  # the loader's own error names the file
    wanted = identity(gguf, str(dtype).removeprefix("torch."))
    folder = checkpoints / folder_name(wanted)
    if rank.is_main and not (folder / MARKER).is_file():
        try:
            _convert(spec, base, dtype, folder, wanted, fence)
        finally:
            distributed.barrier()  # also on an error: the others then load the file themselves, and fail alike
    else:
        distributed.barrier()
    if (folder / MARKER).is_file():
        log.info("model: %s, converted from %s once for this job", folder.name, gguf.name)
        return spec.model_copy(update={"source": str(folder), "gguf_file": None})
    return spec


def _convert(spec: ModelSpec, base: Path, dtype: Any, folder: Path, wanted: dict[str, Any], fence: Fence) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not fence.allows(f"converting {spec.gguf_file}"):
        return
    for stale in folder.parent.glob(PARTIAL_PREFIX + "*"):
        log.warning("removing an incomplete model conversion from an earlier attempt: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    source, options = source_and_options(spec, base)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **options)
    except Exception as error:
        raise ModelError(f"model.source {spec.source}: cannot load the model: {error}") from error
    forget_gguf_quantization(model)
    partial = folder.parent / f"{PARTIAL_PREFIX}{folder.name.removeprefix(PREFIX)}-{os.getpid()}"
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / MARKER).write_text(json.dumps(wanted, indent=2) + "\n")
        if fence.allows(f"publishing {folder.name}"):
            partial.rename(folder)
    # Another attempt's folder already there, or a full or read-only disk, for which safetensors raises its
    # own error rather than an OSError: never worse than without the cache.
    except Exception as error:
        if not (folder / MARKER).is_file():
            log.warning("could not keep the converted model in %s (%s); each rank converts the file", folder, error)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
