"""API keys, the Origin allow-list and rate limits. Keys are compared in constant time and never logged."""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable


class KeyRing:
    """Optional API keys: empty means open access."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode() for k in keys if k]

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def check(self, key: str | None) -> bool:
        if not self._keys:
            return True
        if not key:
            return False
        given = key.encode()
        return any(hmac.compare_digest(given, k) for k in self._keys)

    @staticmethod
    def bearer(header: str | None) -> str | None:
        """The token of an ``Authorization: Bearer <token>`` header."""
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def origin_allowed(origin: str | None, allowed: list[str]) -> bool:
    """No allow-list: any origin. With one, a browser's Origin must be listed; clients that send none pass."""
    if not allowed or origin is None:
        return True
    return "*" in allowed or origin.rstrip("/") in {a.rstrip("/") for a in allowed}


class TokenBucket:
    """`rate` tokens per second up to `burst`; `take` says how long to wait when empty (0: allowed)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, cost: float = 1.0) -> float:
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate


class IpLimits:
    """Per-IP connection count and a shared per-IP frame rate."""

    def __init__(self, max_connections: int, rate: float, burst: float) -> None:
        self.max_connections, self.rate, self.burst = max_connections, rate, burst
        self.connections: dict[str, int] = {}
        self.buckets: dict[str, TokenBucket] = {}

    def connect(self, ip: str) -> bool:
        if self.max_connections and self.connections.get(ip, 0) >= self.max_connections:
            return False
        self.connections[ip] = self.connections.get(ip, 0) + 1
        return True

    def disconnect(self, ip: str) -> None:
        left = self.connections.get(ip, 0) - 1
        if left > 0:
            self.connections[ip] = left
        else:
            self.connections.pop(ip, None)
            self.buckets.pop(ip, None)

    def bucket(self, ip: str) -> TokenBucket:
        if ip not in self.buckets:
            self.buckets[ip] = TokenBucket(self.rate, self.burst)
        return self.buckets[ip]
