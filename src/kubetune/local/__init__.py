"""`kubetune run`: a FineTuneJob on one machine, with the operator's own decisions (kubetune.policies).

Each local trainer rank plays the part of one worker pod; the runner is a supervisor like the operator.
Modules, from the outside in:

- runner.py   `kubetune run FILE`: the level-triggered loop: observe the ranks, `policies.reconcile.decide`,
              write `status.json` (the CRD's status shape), launch / restart / stop; Ctrl-C suspends
- workdir.py  the working directory: its layout, the job it belongs to (resume vs refuse), checks before
              anything starts
- preflight.py the machine before any rank starts: the accelerator of an unset `distributed.accelerator`
              (CPU when no CUDA device is visible, said in one line), and what it cannot run (exit 2)
- launch.py   one attempt of the local gang: N ranks under torch's elastic launcher (its own restarts off),
              and how each rank ended
- rank.py     the entry point of one rank (`python -m kubetune.local.rank train ...`): one log per rank,
              Ctrl-C turned into SIGTERM
- display.py  the live progress line (rich on a terminal, plain log lines elsewhere), from progress.json
- report.py   `loss.png` and `report.md` (the text is `kubetune.view.report`, as `kubetune status` prints it),
              rebuilt from the files the run wrote
"""
