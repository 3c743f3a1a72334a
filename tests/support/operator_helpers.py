"""Manifests and a fake rank 0 for the operator tests."""

from __future__ import annotations

import copy
import socket
from typing import Any

import aiohttp.web

from kubetune.api.outcome import ProgressSnapshot


def job_manifest(name: str = "demo", workers: int = 2, **spec: Any) -> dict[str, Any]:
    """A FineTuneJob manifest: `spec` entries are merged over a small valid spec."""
    base: dict[str, Any] = {
        "model": {"source": "hf://org/model"},
        "dataset": {"train": "pvc://data/train.jsonl"},
        "distributed": {"workers": workers, "accelerator": "cpu"},
        "storage": {"checkpoints": "pvc://ckpt/demo"},
        "retryPolicy": {"maxRestarts": 2, "backoffSeconds": 0},
    }
    for key, value in spec.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": copy.deepcopy(base),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class FakeRankZero:
    """Serves GET /progress like the trainer's rank 0 (the snapshot is set by the test)."""

    def __init__(self) -> None:
        self.snapshot: ProgressSnapshot | None = None
        self.port = free_port()
        self.requests = 0

    async def _progress(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        self.requests += 1
        if self.snapshot is None:
            return aiohttp.web.Response(status=503)
        return aiohttp.web.Response(body=self.snapshot.model_dump_json(by_alias=True), content_type="application/json")
