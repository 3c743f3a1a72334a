"""A real Prometheus server for tests: Debian's `prometheus` binary on a loopback port, its own config
and storage in a temporary folder, scraping every second, with kubetune's generated alert rules loaded.

Scrape jobs keep the targets' own labels (`honor_labels`), as the chart's PodMonitor and ServiceMonitor
do, so queries see the trainer's `namespace` exactly as a cluster's Prometheus would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.ports import free_port
from tests.support.waiting import GiveUp, eventually

#: Longest wait for Prometheus to become ready, in seconds (a hang guard).
READY_TIMEOUT = 30


def get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


class Prometheus:
    """One Prometheus process; `targets` maps a scrape job name to `host:port`."""

    def __init__(self, directory: Path, targets: dict[str, str], rule_file: Path | None = None) -> None:
        self.directory = directory
        self.targets = targets
        self.rule_file = rule_file
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "prometheus.log"

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": name, "honor_labels": True, "static_configs": [{"targets": [target]}]}
                for name, target in self.targets.items()
            ],
        }
        if self.rule_file is not None:
            config["rule_files"] = [str(self.rule_file)]
        return config

    def start(self) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed (apt-get install prometheus)"
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config()))
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT)
        process = self.process

        def ready() -> bool:
            try:
                get(f"{self.url}/-/ready", timeout=1)
                return True
            except OSError:
                if process.poll() is not None:
                    raise GiveUp(f"Prometheus exited with {process.returncode}") from None
                return False

        try:
            eventually(ready, READY_TIMEOUT, interval=0.2, message="Prometheus to be ready")
        except AssertionError:
            self.stop()
            raise AssertionError(f"Prometheus did not start:\n{self.log.read_text()[-3000:]}") from None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer (fails on an error answer)."""
        query = urllib.parse.urlencode(params)
        answer = json.loads(get(f"{self.url}/api/v1/{path}?{query}"))
        assert answer["status"] == "success", answer
        return answer["data"]

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step
        )["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        values: list[str] = self.api(f"label/{label}/values", **{"match[]": match})
        return values

    def targets_health(self) -> dict[str, str]:
        active = self.api("targets")["activeTargets"]
        return {target["labels"]["job"]: target["health"] for target in active}

    def rule_health(self) -> list[tuple[str, str]]:
        groups = self.api("rules")["groups"]
        return [(rule["name"], rule["health"]) for group in groups for rule in group["rules"]]

    def firing_alerts(self) -> list[str]:
        return [alert["labels"]["alertname"] for alert in self.api("alerts")["alerts"] if alert["state"] == "firing"]
