"""Prometheus text-format metrics with no dependency: counters, gauges, and summaries with exact recent quantiles.

A summary keeps its last `window` observations, so ``/metrics`` reports p50/p90/p99 over recent traffic rather than
bucket estimates; that is what the load benchmark reads for the server-side overhead figures.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Callable

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels) -> str:
    parts = [f'{k}="{v}"' for k, v in labels]
    return "{" + ",".join(parts) + "}" if parts else ""


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.values: dict[Labels, float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] += amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        out += [f"{self.name}{_labels(k)} {v:g}" for k, v in sorted(self.values.items())] or [f"{self.name} 0"]
        return out


class Gauge:
    """A value read at scrape time from a callable."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {self.read():g}"]


class Summary:
    QUANTILES = (0.5, 0.9, 0.99)

    def __init__(self, name: str, help_text: str, window: int = 20000) -> None:
        self.name, self.help = name, help_text
        self.recent: deque[float] = deque(maxlen=window)
        self.count = 0
        self.total = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.recent.append(value)
            self.count += 1
            self.total += value

    def quantile(self, q: float) -> float:
        with self._lock:
            data = sorted(self.recent)
        if not data:
            return float("nan")
        return data[min(int(q * len(data)), len(data) - 1)]

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} summary"]
        out += [f'{self.name}{{quantile="{q}"}} {self.quantile(q):.6g}' for q in self.QUANTILES]
        out += [f"{self.name}_sum {self.total:.6g}", f"{self.name}_count {self.count}"]
        return out


class Metrics:
    """Everything the service reports at /metrics."""

    def __init__(self) -> None:
        self.turns = Counter("xdai_turns_total", "Replies finished, by bot and finish reason.")
        self.errors = Counter("xdai_errors_total", "Error frames sent, by code.")
        self.connections_total = Counter("xdai_connections_total", "WebSocket connections accepted.")
        self.auth_failures = Counter("xdai_auth_failures_total", "API keys refused (handshake, session.open, HTTP).")
        self.ack_latency = Summary("xdai_ack_latency_seconds", "message.create received -> message.ack written to the socket.")
        self.delta_forward = Summary("xdai_delta_forward_seconds", "A piece leaving the model worker -> its delta written to the socket.")
        self.ttft = Summary("xdai_ttft_seconds", "message.create received -> first delta.")
        self.reply_seconds = Summary("xdai_reply_seconds", "message.create received -> response.end.")
        self.gauges: list[Gauge] = []

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help_text, read))

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.turns, self.errors, self.connections_total, self.auth_failures, self.ack_latency, self.delta_forward,
                       self.ttft, self.reply_seconds, *self.gauges):
            lines += metric.render()
        return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name with labels: value} (the tests and the benchmark read /metrics with it)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
