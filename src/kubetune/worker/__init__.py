"""What runs as a worker pod's command: the supervisor that keeps the pod across attempts.

- `supervisor.py`: the ranks of one pod attempt after attempt; it reports and obeys, the operator decides.
- `ranks.py`: one attempt's launcher and ranks as one process group, stopped as a whole.
- `endpoint.py`: the HTTP endpoint the operator reads (`GET /state`) and orders through (`POST /stop`,
  `POST /start`), and the readiness probe (`GET /ready`).
- `__main__.py`: `python -m kubetune.worker [flags] -- torchrun ...`.

Nothing here imports torch: the supervisor starts in a blink and outlives every attempt's imports.
"""
