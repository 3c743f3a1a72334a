"""An HTTP liveness probe run the way the kubelet runs one (a GET that must answer 2xx/3xx within its
timeout), every `period` seconds until stopped: for scenarios that must show a component stayed healthy
throughout, not only at the end. The longest run of failures is what a kubelet's `failureThreshold` is
compared with."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field


@dataclass
class ProbeRecord:
    probes: int = 0
    failures: int = 0
    longest_failure_streak: int = 0
    errors: list[str] = field(default_factory=list)
    """The first few failures' reasons."""


class LivenessProbe:
    """Probes `url` every `period` seconds with a `timeout`-second limit, in a thread, until `stop()`."""

    def __init__(self, url: str, period: float = 1.0, timeout: float = 1.0) -> None:
        self.url = url
        self.timeout = timeout
        self.record = ProbeRecord()
        self._period = period
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy for loopback
        self._streak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="liveness-probe", daemon=True)
        self._thread.start()

    def _probe(self) -> str | None:
        try:
            with self._opener.open(self.url, timeout=self.timeout) as answer:
                return None if 200 <= answer.status < 400 else f"HTTP {answer.status}"
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code}"
        except Exception as error:  # any failure is a failed probe (a broken answer too), never a dead thread
            return f"{type(error).__name__}: {error}"

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            error = self._probe()
            self.record.probes += 1
            if error is None:
                self._streak = 0
                continue
            self.record.failures += 1
            self._streak += 1
            self.record.longest_failure_streak = max(self.record.longest_failure_streak, self._streak)
            if len(self.record.errors) < 5:
                self.record.errors.append(error)

    def stop(self) -> ProbeRecord:
        self._stop.set()
        self._thread.join()
        return self.record
