"""FineTuneJob statuses and events as the operator writes them, for the tests of `kubetune status`.

`running_status()` is a job half-way through attempt 2 after one restart (out of memory), with progress,
losses and the Restarting condition turned False again; `finished_status()` is the same job succeeded,
with the approaches table and its verdict. `job_event(...)` is a core/v1 Event about a job, as kopf
posts it, and `restart_event(...)` the one the operator posts when it restarts the gang.
"""

from __future__ import annotations

import datetime
from typing import Any

from kubetune.api.job import GROUP, KIND, VERSION

RESTART_MESSAGE = (
    "worker 1 of attempt 1 ran out of memory (exit 137); restarting the gang from the last checkpoint in 10s "
    "(restart 1 of 3)"
)


def rfc3339(seconds_ago: float = 0) -> str:
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def running_status(step: int = 12, train_loss: float = 1.25, eval_loss: float = 1.1) -> dict[str, Any]:
    return {
        "phase": "Running",
        "restarts": 1,
        "attempt": 2,
        "startTime": rfc3339(600),
        "message": "attempt 2: 2 worker(s) training",
        "conditions": [
            {
                "type": "Created",
                "status": "True",
                "reason": "GangCreated",
                "message": "attempt 1: 2 worker(s) created",
                "lastTransitionTime": rfc3339(600),
            },
            {
                "type": "Running",
                "status": "True",
                "reason": "WorkersRunning",
                "message": "attempt 2: 2 worker(s) training",
                "lastTransitionTime": rfc3339(240),
            },
            {
                "type": "Restarting",
                "status": "False",
                "reason": "WorkersRunning",
                "message": "attempt 2: 2 worker(s) training",
                "lastTransitionTime": rfc3339(240),
            },
        ],
        "progress": {
            "step": step,
            "totalSteps": 40,
            "epoch": step / 20,
            "percent": step * 100 // 40,
            "etaSeconds": 130,
        },
        "metrics": {
            "trainLoss": train_loss,
            "evalLoss": eval_loss,
            "bestEvalLoss": min(eval_loss, 1.05),
            "bestStep": 10,
            "tokensPerSecond": 850.0,
            "learningRate": 0.0002,
        },
        "checkpoints": {"latest": "/checkpoints/demo/step-10", "latestStep": 10},
    }


def finished_status() -> dict[str, Any]:
    status = running_status(step=40, train_loss=0.3, eval_loss=0.4)
    status["phase"] = "Succeeded"
    status["completionTime"] = rfc3339(0)
    status["progress"]["etaSeconds"] = 0
    status["conditions"].append(
        {
            "type": "Succeeded",
            "status": "True",
            "reason": "TrainingCompleted",
            "message": "trained 40 steps",
            "lastTransitionTime": rfc3339(0),
        }
    )
    status["output"] = {"path": "/models/demo"}
    status["evaluation"] = {
        "approaches": [
            {"name": "base, zero-shot", "approach": "zero-shot", "model": "base", "exactMatch": 0.0, "evalLoss": 3.0},
            {"name": "fine-tuned", "approach": "fine-tuned", "model": "fine-tuned", "exactMatch": 1.0, "evalLoss": 0.4},
        ],
        "verdict": "fine-tuned (135 M) reaches 1.00 exact match vs 0.00 for base, zero-shot (135 M)",
    }
    return status


def job_event(
    job: dict[str, Any], type_: str, reason: str, message: str, seconds_ago: float = 0, namespace: str | None = None
) -> dict[str, Any]:
    metadata = job["metadata"]
    namespace = namespace or metadata.get("namespace") or "default"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{metadata['name']}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": metadata["name"],
            "namespace": namespace,
            "uid": metadata.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message,
        "source": {"component": "kopf"},
        "firstTimestamp": rfc3339(seconds_ago),
        "lastTimestamp": rfc3339(seconds_ago),
    }


def restart_event(job: dict[str, Any], seconds_ago: float = 300) -> dict[str, Any]:
    return job_event(job, "Warning", "OutOfMemory", RESTART_MESSAGE, seconds_ago)
