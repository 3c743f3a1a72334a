"""The decisions of kubetune, as pure functions shared by the operator and the local runner.

One module per policy (retry, early stopping, deadlines, suspension, the gang's shape, the status it
implies), each tested with tables beside it. Nothing here talks to Kubernetes, processes or torch, and
nothing reads the clock: time is always passed in as `now` (a timezone-aware UTC datetime, except in
`hang`, whose judges compare only readings of their own monotonic clock, in seconds).

How a supervisor uses it (the local runner does exactly what the operator does)::

    from kubetune.policies.observed import WorkerObservation, parse_termination_message
    from kubetune.policies.reconcile import decide

    job = FineTuneJob(..., status=<the status you wrote last time, or None>)
    workers = [WorkerObservation(index=0, attempt=1, state="failed", exit_code=137), ...]
    decision = decide(job, workers, now=datetime.now(UTC), progress=<rank 0's ProgressSnapshot or None>)
    1. write decision.status (it is the memory: attempt number, restarts, when a backoff began);
    2. emit decision.events;
    3. stop/remove the workers in decision.plan.delete (WorkerRef(attempt, index));
       start decision.plan.create (worker indexes) of attempt decision.plan.attempt,
       each with KUBETUNE_ATTEMPT=<attempt> so it resumes from the last checkpoint;
    4. if decision.delete_job: remove the job and everything it owns (ttlSecondsAfterFinished);
    5. look again after decision.check_again_in seconds at the latest (or sooner, on any change).

Observing workers (`observed.WorkerObservation`): report every worker you still have, of any attempt,
including ones you are stopping (`deleting=True`); drop one only when it is gone for good (the next
attempt starts only when no worker of an older one is left). `state` is pending / running / succeeded /
failed; for a failed one give `exit_code` (or `signal` for a process killed by a signal) and `result`
(`parse_termination_message(text)` on the termination message or result.json). `oom_killed`,
`disrupted` (preemption, eviction, drain, node loss — not counted against maxRestarts; `preempted` for a
preemption), `waiting_reason`/`waiting_since` (ErrImagePull...), `volume_held_elsewhere` (Multi-Attach)
and `unschedulable_since` only apply where they can be observed; a local runner leaves them at their
defaults.

Modules:
- observed:   WorkerObservation, parse_termination_message, of_attempt, missing_indexes
- retry:      classify_worker / root_cause -> FailureVerdict(kind RETRYABLE | DISRUPTION | PERMANENT,
              reason, message); backoff_seconds (backoffSeconds * 2^(restarts-1), capped at 600 s);
              restarts_left (maxRestarts)
- deadlines:  active_deadline_left (activeDeadlineSeconds, suspension not counted), startup_verdict
              (image pull / config errors / ContainerCreating past startupTimeoutSeconds, unschedulable
              past schedulingTimeoutSeconds), judged by why: `limits` of a relaunch after a disruption
              (relaunch_cause: Preempted has no scheduling deadline, NodeLost/Disrupted 30 min) and of a
              volume still attached elsewhere (10 min); waiting_status names the wait (VolumeStillAttached,
              Preempted, Unschedulable)
- storage:    check_claims(spec, observed claims) -> StorageVerdict (fail ReadWriteOncePod with > 1 worker;
              warn ReadWriteOnce, ReadOnlyMany for writes, a missing claim); apply_to_launch: the operator
              runs it before each attempt launches
- suspension: queue_name (Kueue), the messages of a suspended / resumed job
- gang:       GangPlan(attempt, create, delete); launch / keep / remove_all / gang_broken
- status:     set_condition (lastTransitionTime moves only on change), apply_progress, apply_result,
              transition_events -> Event(type Normal|Warning, reason, message)
- reconcile:  decide(job, workers, now, progress) -> Decision, the state machine composing the above
- handover:   the whole result taken from rank 0's GET /result: worker 0 seen as ended with it
              (handed_over), when rank 0 may be told so (confirmable)
- progress_reach: ProgressUnavailable when rank 0's progress cannot be read for longer than a bound
- spec_changes: effective_spec / refused_fields: a started job keeps the spec it launched with (only
              `suspend` and `scheduling` may change)
- early_stopping: observe(spec, state, value, step) -> improved / stop (patience, minDelta), run by the
              trainer at every evaluation
- fit:        overfitting / underfitting / diverged(history, ...) -> FitSignal: signs read off the loss
              curves (conditions and 0/1 gauges)
- preflight:  choose_local_accelerator, rank_accelerator, device_problems, checkpoint_bytes_floor /
              disk_problem: what this machine cannot run, found before the gang starts (never retried)
- folder_owner: decide(recorded owner, this job, has checkpoints) -> Verdict: resume, adopt the same
              run's checkpoints (named), or refuse a different run's (the fields old -> new)
- hang:       observe / verdict / declares over every rank's beats -> Hang (which ranks stopped, the
              step): the trainer's judges (ranks 0 and 1) run it; timeout_seconds (hangTimeoutSeconds)
- threads:    threads_per_process: OMP_NUM_THREADS from the worker's CPU limit, request or cores
"""
