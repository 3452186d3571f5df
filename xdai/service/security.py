"""Who may do what, and how often: API keys and the principals they name, per-session resume tokens, the Origin
allow-list, and the per-address limits (frames, new sessions, failed auth, turns in flight). Keys and tokens are
compared in constant time and never logged; only their digests are kept."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from xdai.config import normalize_origin


def _digest(kind: str, secret: str) -> str:
    return hashlib.sha256(f"xdai-{kind}\0{secret}".encode()).hexdigest()


class KeyRing:
    """Optional API keys: empty means open access. A key's principal (``key:<digest>``) is what owns the sessions
    opened with it; the key itself is never kept. A key may name a tenant (``{key, tenant}``): the users its
    sessions name are that tenant's (`tenant`); a key without one is a tenant of its own."""

    def __init__(self, keys: Iterable[str | Mapping[str, str]]) -> None:
        self._keys: list[tuple[bytes, str]] = []
        self._tenants: dict[str, str] = {}
        for entry in keys:
            key = entry.get("key", "") if isinstance(entry, Mapping) else entry
            if not key:
                continue
            principal = "key:" + _digest("key", key)[:32]
            self._keys.append((key.encode(), principal))
            named = entry.get("tenant") if isinstance(entry, Mapping) else None
            self._tenants[principal] = named or "key-" + principal[4:20]

    def tenant(self, principal: str | None) -> str | None:
        """Whose users a session opened by `principal` names: its key's tenant; None without keys (a user is
        then trusted as given)."""
        return self._tenants.get(principal) if principal is not None else None

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def identify(self, key: str | None) -> str | None:
        """The principal of `key`, or None when it is not one of the keys (or no keys are configured)."""
        if not self._keys or not key:
            return None
        given = key.encode()
        found = None
        for secret, principal in self._keys:  # every key is compared, so the time says nothing about which
            if hmac.compare_digest(given, secret):
                found = principal
        return found

    def check(self, key: str | None) -> bool:
        return not self._keys or self.identify(key) is not None

    @staticmethod
    def bearer(header: str | None) -> str | None:
        """The token of an ``Authorization: Bearer <token>`` header."""
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def new_resume_token() -> tuple[str, str]:
    """(token for the client, the principal stored with the session): without API keys, holding the token is what
    makes a client the session's owner."""
    token = secrets.token_urlsafe(32)
    return token, token_principal(token)


def token_principal(token: str) -> str:
    return "token:" + _digest("resume", token)[:32]


def same_principal(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


def origin_allowed(origin: str | None, allowed: list[str]) -> bool:
    """No allow-list: any origin. With one (entries normalised at load), a browser's Origin must be listed;
    clients that send none pass."""
    if not allowed or origin is None:
        return True
    if "*" in allowed:
        return True
    try:
        return normalize_origin(origin) in allowed
    except ValueError:
        return False


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


@dataclass
class AddressLimits:
    max_connections: int = 256
    frame_rate: float = 50.0
    frame_burst: float = 100.0
    session_rate: float = 2.0  # new sessions per second
    session_burst: float = 20.0
    auth_free_failures: int = 5  # failed key checks before the backoff starts
    auth_backoff_max_s: float = 300.0
    ttl_s: float = 900.0  # an address's state is kept this long after its last use
    capacity: int = 65536  # addresses tracked at most (least recently used dropped first, never a connected one)


@dataclass
class Address:
    frames: TokenBucket
    sessions: TokenBucket
    connections: int = 0
    auth_failures: int = 0
    last_failure: float = 0.0
    blocked_until: float = 0.0
    seen: float = field(default_factory=time.monotonic)


class AddressBook:
    """Per-address state that outlives connections (a reconnect does not refill a bucket or forget failed keys),
    in a bounded LRU: an address with no connection is dropped after `ttl_s` idle, or first when full."""

    def __init__(self, limits: AddressLimits) -> None:
        self.limits = limits
        self.entries: OrderedDict[str, Address] = OrderedDict()

    def get(self, ip: str) -> Address:
        now = time.monotonic()
        entry = self.entries.get(ip)
        if entry is None:
            self._prune(now)
            lim = self.limits
            entry = Address(TokenBucket(lim.frame_rate, lim.frame_burst), TokenBucket(lim.session_rate,
                                                                                      lim.session_burst))
            self.entries[ip] = entry
        else:
            self.entries.move_to_end(ip)
        entry.seen = now
        return entry

    def _prune(self, now: float) -> None:
        for _ in range(len(self.entries)):
            ip, oldest = next(iter(self.entries.items()))
            if oldest.connections > 0:
                self.entries.move_to_end(ip)
                continue
            if now - oldest.seen > self.limits.ttl_s or len(self.entries) >= self.limits.capacity:
                del self.entries[ip]
                continue
            break

    def connect(self, ip: str) -> bool:
        entry = self.get(ip)
        if self.limits.max_connections and entry.connections >= self.limits.max_connections:
            return False
        entry.connections += 1
        return True

    def disconnect(self, ip: str) -> None:
        entry = self.entries.get(ip)
        if entry is not None:
            entry.connections = max(entry.connections - 1, 0)
            entry.seen = time.monotonic()

    def frame(self, ip: str) -> float:
        return self.get(ip).frames.take()

    def new_session(self, ip: str) -> float:
        return self.get(ip).sessions.take()

    def auth_wait(self, ip: str) -> float:
        """Seconds before this address may try a key again (0: now)."""
        return max(self.get(ip).blocked_until - time.monotonic(), 0.0)

    def auth_failed(self, ip: str) -> float:
        """Count a failed key check; returns the backoff it starts (0 while within the free failures)."""
        entry, now = self.get(ip), time.monotonic()
        if now - entry.last_failure > self.limits.auth_backoff_max_s:
            entry.auth_failures = 0  # a quiet spell forgives
        entry.auth_failures += 1
        entry.last_failure = now
        over = entry.auth_failures - self.limits.auth_free_failures
        if over <= 0:
            return 0.0
        wait = min(0.5 * 2.0 ** (over - 1), self.limits.auth_backoff_max_s)
        entry.blocked_until = now + wait
        return wait

    def auth_ok(self, ip: str) -> None:
        entry = self.get(ip)
        entry.auth_failures, entry.blocked_until = 0, 0.0


class TurnQuota:
    """Turns in flight per client: `limits` maps a kind ("ip", "key") to its cap (0: none)."""

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits = limits
        self.counts: dict[tuple[str, str], int] = {}

    def acquire(self, tags: Sequence[tuple[str, str]]) -> str | None:
        """Take one turn for every tag; the kind that is full (nothing taken), or None."""
        for tag in tags:
            cap = self.limits.get(tag[0], 0)
            if cap and self.counts.get(tag, 0) >= cap:
                return tag[0]
        for tag in tags:
            self.counts[tag] = self.counts.get(tag, 0) + 1
        return None

    def release(self, tags: Sequence[tuple[str, str]]) -> None:
        for tag in tags:
            left = self.counts.get(tag, 0) - 1
            if left > 0:
                self.counts[tag] = left
            else:
                self.counts.pop(tag, None)
