"""`kubetune run`'s look at the machine before it starts a rank: which accelerator, and can it run the job?

The ranks check the same things themselves (`kubetune.trainer.preflight`), but a problem found there
costs a launch and reads like a failed run. Here, on the same machine and with the same rules
(`kubetune.policies.preflight`), it is a bad-input error before anything starts (exit 2, like a manifest
error), and nothing is written to the workdir. A manifest that leaves `distributed.accelerator` unset
trains on the GPUs when a CUDA device is visible and on the CPU otherwise; the choice is one line of
output, and it is passed to the ranks the way the operator passes the manifest's (TrainerInvocation).
"""

from __future__ import annotations

from pathlib import Path

from kubetune.api.job import FineTuneJob
from kubetune.local.workdir import Workdir
from kubetune.policies.preflight import AcceleratorChoice, Devices, choose_local_accelerator, device_problems
from kubetune.trainer.config import RunPaths
from kubetune.trainer.preflight import input_problems, observe_devices, storage_problems


class PreflightError(Exception):
    """The job cannot run on this machine as written: one line per problem, each naming the field."""


def check(
    job: FineTuneJob, manifest: Path, workdir: Workdir, processes: int, devices: Devices | None = None
) -> AcceleratorChoice:
    """The accelerator the ranks use; PreflightError when this machine cannot run `processes` ranks of the
    job (`job` with its local paths already resolved, `workdir` where checkpoints will go)."""
    devices = devices or observe_devices()
    distributed = job.spec.distributed
    choice = choose_local_accelerator(distributed.accelerator, devices)
    problems = device_problems(choice.accelerator, distributed.accelerator, distributed.precision, devices, processes)
    problems += input_problems(job.spec, manifest.resolve().parent)
    if not problems:
        paths = RunPaths(manifest, workdir.root, checkpoints=workdir.checkpoints, output=workdir.output)
        problems += storage_problems(job.spec, paths, manifest.resolve().parent)
    if problems:
        raise PreflightError("\n".join(f"{manifest}: {problem}" for problem in problems))
    return choice
