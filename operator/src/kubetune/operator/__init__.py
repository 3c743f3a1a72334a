"""The kubetune operator: runs FineTuneJobs on Kubernetes as gangs of trainer pods (`kubetune operator`).

A thin shell around the shared decisions in kubetune.policies (the local runner applies the same ones
to processes). Modules, from the outside in:

- main.py        `kubetune operator`: settings from flags, probes and metrics, stand by until leading, then
                 kopf.operator(...); exits 1 when the Lease is lost
- leader_election.py  who leads, as pure decisions on a Lease (client-go's protocol); lease.py the shell:
                 read/write the Lease, wait to lead, renew, the write fence every API write asks
- health.py      /healthz and /readyz for leader and standby; settings.py every timing and port, and the
                 explicit kopf settings
- handlers.py    the kopf handlers: jobs into the cache, caches started and synced, reconciles queued,
                 login with the client's credentials
- caches.py      every object the reconcile reads, kept by watches (informer.py), in stores (store.py)
- informer.py    one list+watch per kind, label-selected on the server; resumes, re-lists on 410 Gone
- store.py       objects by name and by job; newer versions only; the operator's own writes put in at once
- workqueue.py   reconciles: one per job at a time, bursts merged, bounded concurrency, timers, backoff
- reconciler.py  one reconcile: gather (job, launched spec, pods, progress) from the caches -> policies.decide
                 -> apply (status first, then pods); spec changes to frozen fields are refused
- creation.py    a gang: quota pre-check, Service and ConfigMap then pods, refusals classified (refusals.py)
- kube.py        the door for every write to the Kubernetes API but the Lease's (kubernetes client in a
                 thread, retries, writes rate-limited by ratelimit.py and fenced by the Lease; api_client.py
                 its configuration and errors); events.py posts Events through it
- observe.py     pod -> WorkerObservation (exit codes, OOMKilled, DisruptionTarget, Unschedulable, ...)
- builders.py    pure builders: worker pods (restricted PSS), headless Service, ConfigMap; path mapping
- progress.py    rank 0's GET /progress and /result on worker 0's pod IP, port 9400 (injectable for tests)
- worker_orders.py a worker pod's supervisor (kubetune.worker): GET /state as a WorkerObservation, POST /stop
                 and /start of the next attempt, bounded and token-checked (for restarts in place; not used yet)
- progress_poller.py reads rank 0's progress outside the reconciles, a bounded pool on its own cadence;
                 asks for a reconcile (low-priority lane) only when the status has something to say
- rank_zero.py   gathers what rank 0 says per reconcile: snapshot, reachability, the whole result; confirms it
- metrics.py     the operator's Prometheus metrics, one-line recorders
- rbac.py        the permissions it needs, as data (the Helm chart renders its Role from them)
"""
