"""The one way tests write a FineTuneJob manifest: a builder that reads like a sentence.

    from tests.support.builders import a_job

    a_job("demo").workers(2).retry(max_restarts=1).build()          # the manifest, a plain dict
    a_job("demo").train("data/train.jsonl").to_job()                # the validated API object
    a_job("demo").spec({"bogus": True}).build()                     # anything without a method of its own

`a_job(name)` starts from the smallest valid job (a Hugging Face model id and a training file on a
claim); every other field has the API's default until a test sets it. Presets are builders too:
`a_cpu_gang` here (what the operator's tests start from), `tiny.a_tiny_job` (a tiny model that trains in
seconds) and `tests/e2e/jobs.a_scenario` (the end-to-end scenarios' job).

A builder never changes: each method returns a new one, so a preset can be shared and extended freely.

**The merge rule** (`deep_merge`, the only one the builder and every test uses): what a method sets is
merged into what is there key by key; a mapping merged into a mapping merges recursively; any other
value (a string, a number, a list) replaces; `None` removes the key. So `.retry(max_restarts=1)` keeps
the `backoffSeconds` set before, and `.spec(storage=None)` removes `spec.storage`.

**Keyword names** are written in Python's snake_case and become the manifest's camelCase
(`max_restarts=1` sets `maxRestarts`; a camelCase name passes unchanged); only the names of the call's
own keywords are converted, never the keys of a mapping given as a value, which is written as in a
manifest. A positional mapping (`.spec({...})`, `.metadata({...})`) is merged as it is.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubetune.api.job import FineTuneJob

API_VERSION = "kubetune.io/v1alpha1"
KIND = "FineTuneJob"


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in (neither is changed): mappings merge recursively, any other value
    replaces, and a `None` value removes the key."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def camel(name: str) -> str:
    """`max_restarts` -> `maxRestarts`; a name without underscores is returned as it is."""
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def _fields(overrides: Mapping[str, Any] | None, keywords: Mapping[str, Any]) -> dict[str, Any]:
    """One call's fields: its positional mapping (as written) and its keywords (names made camelCase);
    a None among them stays, to remove that key when merged."""
    fields = dict(overrides or {})
    fields.update((camel(key), value) for key, value in keywords.items())
    return fields


class JobBuilder:
    """An immutable FineTuneJob manifest under construction; see the module docstring."""

    def __init__(self, manifest: Mapping[str, Any]) -> None:
        self._manifest: dict[str, Any] = copy.deepcopy(dict(manifest))

    def __repr__(self) -> str:
        return f"JobBuilder({self._manifest!r})"

    # -- the result ----------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        name: str = self._manifest["metadata"]["name"]
        return name

    def build(self, *, validate: bool = False) -> dict[str, Any]:
        """The manifest, a fresh dict each time; `validate=True` first checks it with the API's models
        (pydantic's ValidationError when it is not a valid FineTuneJob)."""
        if validate:
            self.to_job()
        return copy.deepcopy(self._manifest)

    def to_job(self) -> FineTuneJob:
        """The manifest validated into the API's FineTuneJob."""
        from kubetune.api.job import FineTuneJob

        return FineTuneJob.model_validate(self._manifest)

    # -- generic merges ------------------------------------------------------------------------------

    def merged(self, overrides: Mapping[str, Any]) -> JobBuilder:
        """The builder with `overrides` merged into the whole manifest (the merge rule above)."""
        return JobBuilder(deep_merge(self._manifest, overrides))

    def spec(self, overrides: Mapping[str, Any] | None = None, **fields: Any) -> JobBuilder:
        """Merge into `spec`: `.spec({"bogus": True})`, `.spec(active_deadline_seconds=60)`."""
        return self.merged({"spec": _fields(overrides, fields)})

    def metadata(self, overrides: Mapping[str, Any] | None = None, **fields: Any) -> JobBuilder:
        """Merge into `metadata`: `.metadata(uid="1234", generation=1)`."""
        return self.merged({"metadata": _fields(overrides, fields)})

    def _section(self, key: str, overrides: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> JobBuilder:
        return self.spec({key: _fields(overrides, fields)})

    # -- metadata ------------------------------------------------------------------------------------

    def in_namespace(self, namespace: str) -> JobBuilder:
        return self.metadata(namespace=namespace)

    def labels(self, labels: Mapping[str, str] | None) -> JobBuilder:
        """Merge `labels` into `metadata.labels` (None: no labels)."""
        return self.metadata({"labels": labels})

    # -- model and data ------------------------------------------------------------------------------

    def model(self, source: str | Path, **fields: Any) -> JobBuilder:
        """`spec.model`: its source and any other of its fields (`token_secret_ref={...}`)."""
        return self._section("model", {"source": str(source)}, fields)

    def dataset(self, overrides: Mapping[str, Any] | None = None, **fields: Any) -> JobBuilder:
        """`spec.dataset`: `.dataset(format="chat", max_seq_length=64)`."""
        return self._section("dataset", overrides, fields)

    def train(self, path: str | Path) -> JobBuilder:
        """`spec.dataset.train`."""
        return self.dataset(train=str(path))

    def validation(self, path: str | Path | None) -> JobBuilder:
        """`spec.dataset.validation` (None: none)."""
        return self.dataset(validation=None if path is None else str(path))

    # -- the gang ------------------------------------------------------------------------------------

    def distributed(self, overrides: Mapping[str, Any] | None = None, **fields: Any) -> JobBuilder:
        """`spec.distributed`: `.distributed(zero_stage=2, precision="fp32")`."""
        return self._section("distributed", overrides, fields)

    def workers(self, count: int) -> JobBuilder:
        """`spec.distributed.workers`: the pods of the gang."""
        return self.distributed(workers=count)

    def processes(self, per_worker: int) -> JobBuilder:
        """`spec.distributed.processesPerWorker`."""
        return self.distributed(processes_per_worker=per_worker)

    def accelerator(self, name: str) -> JobBuilder:
        """`spec.distributed.accelerator`: `cpu`, `nvidia-gpu`, ..."""
        return self.distributed(accelerator=name)

    def resources(self, overrides: Mapping[str, Any] | None = None, **fields: Any) -> JobBuilder:
        """`spec.resources`: `.resources(limits={"memory": "16Gi"})`."""
        return self._section("resources", overrides, fields)

    # -- training ------------------------------------------------------------------------------------

    def hyperparameters(self, overrides: Mapping[str, Any] | None = None, **fields: Any) -> JobBuilder:
        """`spec.hyperparameters`: `.hyperparameters(max_steps=8, learning_rate=3e-3)`."""
        return self._section("hyperparameters", overrides, fields)

    def evaluation(self, overrides: Mapping[str, Any] | None = None, **fields: Any) -> JobBuilder:
        """`spec.evaluation`: `.evaluation(every_steps=4, compare_base_model=True)`."""
        return self._section("evaluation", overrides, fields)

    def early_stopping(self, overrides: Mapping[str, Any] | None = None, **fields: Any) -> JobBuilder:
        """`spec.earlyStopping`: `.early_stopping(patience=1, min_delta=100.0)`."""
        return self._section("earlyStopping", overrides, fields)

    def checkpointing(self, overrides: Mapping[str, Any] | None = None, **fields: Any) -> JobBuilder:
        """`spec.checkpointing`: `.checkpointing(every_steps=8, keep=2)`."""
        return self._section("checkpointing", overrides, fields)

    def storage(self, checkpoints: str | None = None, **fields: Any) -> JobBuilder:
        """`spec.storage`: `.storage("pvc://claim/run", output="pvc://out/run")`."""
        given = {"checkpoints": checkpoints} if checkpoints is not None else {}
        return self._section("storage", given, fields)

    # -- lifecycle -----------------------------------------------------------------------------------

    def retry(self, overrides: Mapping[str, Any] | None = None, **fields: Any) -> JobBuilder:
        """`spec.retryPolicy`: `.retry(max_restarts=1, backoff_seconds=0)`."""
        return self._section("retryPolicy", overrides, fields)

    def scheduling(self, overrides: Mapping[str, Any] | None = None, **fields: Any) -> JobBuilder:
        """`spec.scheduling`: `.scheduling(queue_name="team-a", node_selector={"pool": "gpu"})`."""
        return self._section("scheduling", overrides, fields)

    def suspended(self, suspend: bool = True) -> JobBuilder:
        """`spec.suspend`."""
        return self.spec(suspend=suspend)


def a_job(name: str = "demo") -> JobBuilder:
    """The smallest valid FineTuneJob: a Hugging Face model id and a training file on a claim."""
    return JobBuilder(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name},
            "spec": {"model": {"source": "hf://org/model"}, "dataset": {"train": "pvc://data/train.jsonl"}},
        }
    )


def a_cpu_gang(name: str = "demo", workers: int = 2) -> JobBuilder:
    """What the operator's tests start from: a gang of `workers` CPU workers with checkpoints on a claim,
    restarted at once, at most twice."""
    return (
        a_job(name)
        .workers(workers)
        .accelerator("cpu")
        .storage(f"pvc://ckpt/{name}")  # a folder per job: two live jobs never share one (FolderInUse)
        .retry(max_restarts=2, backoff_seconds=0)
    )


__all__ = ["API_VERSION", "KIND", "JobBuilder", "a_cpu_gang", "a_job", "camel", "deep_merge"]
