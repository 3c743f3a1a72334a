"""This process's resident memory, sampled while something runs: for tests that bound what code under test
may allocate. The current resident size (VmRSS) is sampled, not the lifetime peak (ru_maxrss, VmHWM),
which an earlier test in the same process may already have raised past anything measured now."""

from __future__ import annotations

import threading
from pathlib import Path


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class PeakMemory:
    """Samples this process's resident memory every `interval` seconds until stopped; keeps the highest."""

    def __init__(self, interval: float = 0.01) -> None:
        self.start = self.peak = resident_mib()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, resident_mib())

    def stop(self) -> float:
        """The growth of the peak over the start, in MiB."""
        self._stop.set()
        self._thread.join()
        return self.peak - self.start
