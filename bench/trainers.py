"""kubetune's trainer against transformers' Trainer: the same job, run alternately, reduced alike.

Each run is a fresh `torchrun --standalone` gang started from the repository root, so both sides pay
the same launcher, and the order alternates (kubetune first in even repetitions, the baseline first in
odd ones) so that a drift in the machine's load hits both. kubetune runs exactly as in a pod: `kubetune
train` with its metrics endpoint on; the baseline is `bench.hf_side`.

kubetune's series come from its own metrics.jsonl (`time` and `tokens` of every `train` record); the
baseline's from the files `bench.hf_side` writes. `stats.window` reduces both.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import stats, workload
from tests.support.ports import free_port

SIDES = ("kubetune", "transformers")
ROOT = Path(__file__).resolve().parent.parent
_CHECKPOINT_LINE = re.compile(r"checkpoint \S+ saved in ([0-9.]+) s")


@dataclass
class Run:
    """One run of one trainer on one dataset."""

    side: str
    dataset: str
    repetition: int
    tokens_per_second: float = 0.0
    step_seconds: float = 0.0
    steps_measured: int = 0
    tokens_measured: int = 0
    process_seconds: float = 0.0
    """Wall time of the whole torchrun, start-up and end-of-run evaluation/export included."""
    peak_memory_bytes: float | None = None
    peak_rss_bytes: float | None = None
    """The largest resident set of a rank process inside the measured steps (the kernel's peak, VmHWM, read
    and reset four times a second): on the CPU, the whole process's memory at its busiest during training
    (model, gradients, optimizer state, activations, logits)."""
    step_rise_bytes: float | None = None
    """The largest resident set inside the measured steps less the smallest sampled: what a training step
    holds on top of what lasts between steps (model, gradients, optimizer state), i.e. its activations,
    logits and loss buffers. On the CPU, blocks of that size are mmap'ed and handed back to the system when
    freed, so the floor between steps is what lasts."""
    checkpoint_seconds: list[float] = field(default_factory=list)
    """Each checkpoint save (kubetune's log), in seconds."""
    out_of_step_seconds: float | None = None
    """kubetune only: mean time per step spent outside the timed step (metrics, progress, loop)."""
    parameters: int | None = None


def environment(profile: workload.Profile, cache: Path) -> dict[str, str]:
    """The same environment for both sides."""
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_VERBOSITY": "error",
            "HF_DATASETS_CACHE": str(cache / "datasets"),
            "HF_HUB_OFFLINE": "1",
            "PYTHONWARNINGS": "ignore",
        }
    )
    if profile.accelerator == "cpu":
        env.update({"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""})
    return env


def torchrun(profile: workload.Profile) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={profile.processes}"]


class MetricsPoller:
    """Reads chosen gauges from kubetune's /metrics once a second while the run lasts."""

    def __init__(self, port: int, names: tuple[str, ...]) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.names = names
        self.values: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MetricsPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    text = response.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                name = line.split("{", 1)[0].split(" ", 1)[0]
                if name in self.names:
                    self.values[name] = float(line.rsplit(" ", 1)[1])


@dataclass(frozen=True)
class MemorySample:
    """The rank processes' memory at one look (bytes, the largest over the ranks)."""

    at: float
    """time.time() of the look."""
    peak: int
    """The largest resident set since the previous look (VmHWM, reset at every look through
    /proc/PID/clear_refs): a peak between two looks is not missed however short it was."""
    resident: int
    """The resident set at the look (VmRSS)."""


def _memory(pid: int) -> tuple[int, int] | None:
    """(peak resident set since the last look, resident set now) of a process in bytes, and the peak reset
    for the next look; None when it is gone. Where the reset is refused the peak is the process's own."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("Vm")}
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak resident set to the current one
    if "VmRSS" not in fields:
        return None
    return fields.get("VmHWM", fields["VmRSS"]), fields["VmRSS"]


def window_peak(samples: list[MemorySample], start: float, end: float) -> int | None:
    """The largest memory between `start` and `end` (wall-clock seconds); None without samples."""
    inside = [s.peak for s in samples if start <= s.at <= end]
    return max(inside) if inside else None


def window_rise(samples: list[MemorySample], start: float, end: float) -> int | None:
    """The largest memory between `start` and `end` less the smallest resident set; None without samples."""
    inside = [s for s in samples if start <= s.at <= end]
    return max(s.peak for s in inside) - min(s.resident for s in inside) if inside else None


def _run(command: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[float, list[MemorySample]]:
    """Run `command` to the end; (wall seconds, the memory of its descendants, the ranks, four times a
    second). The measured step window picks its peak from them (`window_peak`): the whole process's peak
    would be start-up's or the export's, not a step's."""
    from tests.support.launch import descendants

    began = time.perf_counter()
    samples: list[MemorySample] = []
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
        try:
            while process.poll() is None:
                if time.perf_counter() - began > timeout:
                    raise subprocess.TimeoutExpired(command, timeout)
                looks = [memory for pid in descendants(process.pid) if (memory := _memory(pid)) is not None]
                if looks:
                    samples.append(MemorySample(time.time(), max(p for p, _ in looks), max(r for _, r in looks)))
                time.sleep(0.25)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{' '.join(command[:6])}... failed ({process.returncode}); log {log}:\n{tail}")
    return time.perf_counter() - began, samples


def run_kubetune(profile: workload.Profile, manifest: Path, folder: Path, env: dict[str, str], timeout: float) -> Run:
    port = free_port()
    command = [
        *torchrun(profile),
        "-m",
        "kubetune.cli",
        "train",
        f"--config={manifest}",
        f"--workdir={folder}",
        f"--metrics-port={port}",
    ]
    with MetricsPoller(port, ("kubetune_gpu_memory_peak_bytes",)) as poller:
        seconds, samples = _run(command, env, folder / "run.log", timeout)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("kind") == "train"]
    ends = [r["time"] for r in train]
    rss = window_peak(samples, ends[profile.warmup_steps - 1], ends[-1])
    rise = window_rise(samples, ends[profile.warmup_steps - 1], ends[-1])
    measured = stats.window([r["time"] for r in train], [r["tokens"] for r in train], profile.warmup_steps)
    timed = train[profile.warmup_steps :]
    inside = sum(r["step_seconds"] for r in timed) / len(timed)
    log = (folder / "run.log").read_text(errors="replace")
    return _measured(
        "kubetune",
        measured,
        seconds,
        peak_memory_bytes=poller.values.get("kubetune_gpu_memory_peak_bytes"),
        peak_rss_bytes=rss,
        step_rise_bytes=rise,
        checkpoint_seconds=[float(s) for s in _CHECKPOINT_LINE.findall(log)],
        out_of_step_seconds=measured.seconds / measured.steps - inside,
    )


def run_transformers(
    profile: workload.Profile, manifest: Path, folder: Path, env: dict[str, str], timeout: float
) -> Run:
    command = [*torchrun(profile), "-m", "bench.hf_side", f"--config={manifest}", f"--out={folder}"]
    seconds, samples = _run(command, env, folder / "run.log", timeout)
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(profile.processes)]
    times = ranks[0]["step_end_times"]
    rss = window_peak(samples, times[profile.warmup_steps - 1], times[-1])
    rise = window_rise(samples, times[profile.warmup_steps - 1], times[-1])
    tokens = stats.per_step_tokens([r["micro_batch_tokens"] for r in ranks], ranks[0]["accumulation"], len(times))
    measured = stats.window(times, tokens, profile.warmup_steps)
    peaks = [r["peak_memory_bytes"] for r in ranks if r["peak_memory_bytes"] is not None]
    if ranks[0]["engine"] != "DeepSpeedEngine" or ranks[0]["world"] != profile.processes:
        raise RuntimeError(f"the baseline did not run as a DeepSpeed gang of {profile.processes}: {ranks[0]}")
    return _measured(
        "transformers",
        measured,
        seconds,
        peak_memory_bytes=max(peaks) if peaks else None,
        peak_rss_bytes=rss,
        step_rise_bytes=rise,
        parameters=ranks[0]["parameters"],
    )


def _measured(side: str, measured: Any, seconds: float, **extra: Any) -> Run:
    """A Run of one side from its measured window (dataset and repetition are set by the caller)."""
    return Run(
        side=side,
        dataset="",
        repetition=0,
        tokens_per_second=measured.tokens_per_second,
        step_seconds=measured.step_seconds,
        steps_measured=measured.steps,
        tokens_measured=measured.tokens,
        process_seconds=seconds,
        **extra,
    )


RUNNERS = {"kubetune": run_kubetune, "transformers": run_transformers}


def prepare(profile: workload.Profile, folder: Path) -> dict[str, Path]:
    """Model, datasets and manifests of `profile` under `folder`; manifest path per dataset."""
    dtype = "bfloat16" if profile.precision == "bf16" else "float32"
    model = workload.build_model(folder / "model", profile.model, dtype)
    manifests = {}
    for dataset in profile.datasets:
        train = workload.write_dataset(folder / "data", profile, dataset)
        manifests[dataset] = workload.write_manifest(folder / f"{dataset}.yaml", profile, dataset, model, train)
    return manifests


def order(repetition: int) -> tuple[str, ...]:
    """Who goes first alternates between repetitions."""
    return SIDES if repetition % 2 == 0 else SIDES[::-1]


def compare(profile: workload.Profile, folder: Path, timeout: float = 600.0, progress: Any = print) -> list[Run]:
    """Every run of the comparison, alternating sides, repetitions outermost."""
    manifests = prepare(profile, folder)
    env = environment(profile, folder)
    runs = []
    for repetition in range(profile.repetitions):
        for dataset in profile.datasets:
            for side in order(repetition):
                run_folder = folder / f"{dataset}-{side}-{repetition}"
                run_folder.mkdir(parents=True, exist_ok=True)
                run = RUNNERS[side](profile, manifests[dataset], run_folder, env, timeout)
                run.dataset, run.repetition = dataset, repetition
                progress(
                    f"  {dataset:8s} {side:12s} rep {repetition}: {run.tokens_per_second:9.0f} tokens/s, "
                    f"step {run.step_seconds * 1000:7.1f} ms ({run.process_seconds:.0f} s in all)"
                )
                runs.append(run)
    return runs


def summarise(runs: list[Run]) -> dict[str, Any]:
    """Medians per dataset and side, and the ratios kubetune / transformers."""
    summary: dict[str, Any] = {}
    for dataset in dict.fromkeys(r.dataset for r in runs):
        sides = {}
        for side in SIDES:
            mine = [r for r in runs if r.dataset == dataset and r.side == side]
            peaks = [r.peak_memory_bytes for r in mine if r.peak_memory_bytes is not None]
            rss = [r.peak_rss_bytes for r in mine if r.peak_rss_bytes is not None]
            rise = [r.step_rise_bytes for r in mine if r.step_rise_bytes is not None]
            sides[side] = {
                "tokens_per_second": stats.median([r.tokens_per_second for r in mine]),
                "step_seconds": stats.median([r.step_seconds for r in mine]),
                "runs": len(mine),
                "peak_memory_bytes": max(peaks) if peaks else None,
                "peak_rss_bytes": stats.median(rss) if rss else None,
                "step_rise_bytes": stats.median(rise) if rise else None,
            }
        summary[dataset] = {
            **sides,
            "tokens_per_second_ratio": sides["kubetune"]["tokens_per_second"]
            / sides["transformers"]["tokens_per_second"],
            "step_time_ratio": sides["kubetune"]["step_seconds"] / sides["transformers"]["step_seconds"],
        }
    return summary


def as_records(runs: list[Run]) -> list[dict[str, Any]]:
    return [asdict(r) for r in runs]
