"""Suspension: a suspended job holds no workers but keeps its checkpoints, and resumes from them.

This is what lets a queue (Kueue) admit jobs: it creates them suspended, and admits one by setting
`spec.suspend: false` (possibly changing `spec.scheduling` first). A job that was created suspended has
never started, so it waits for admission; a running job that is suspended gives its resources back
(the gang is removed) and, once resumed, starts a new attempt from the last checkpoint. Suspension is
never a failure: it counts against neither `maxRestarts` nor `activeDeadlineSeconds`.
"""

from __future__ import annotations

from kubetune.api.job import FineTuneJob

#: The label by which Kueue assigns a job to a LocalQueue.
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def queue_name(job: FineTuneJob) -> str | None:
    """The Kueue LocalQueue of the job: the label on the job, else `spec.scheduling.queueName`."""
    label = (job.metadata.labels or {}).get(QUEUE_LABEL)
    if label:
        return label
    return job.spec.scheduling.queue_name if job.spec.scheduling else None


def suspended_message(job: FineTuneJob, started: bool) -> str:
    """The status message of a suspended job: waiting for admission, or paused with checkpoints kept."""
    queue = queue_name(job)
    if not started and queue:
        return f"suspended: waiting for admission by queue {queue}"
    if not started:
        return "suspended before start: set spec.suspend to false to start"
    return "suspended: workers removed, checkpoints kept; set spec.suspend to false to resume from the last checkpoint"


def resumed_message(attempt: int) -> str:
    return f"resumed: attempt {attempt} continues from the last checkpoint"
