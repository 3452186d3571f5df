"""Which tokens the next decode evaluates: admission under the KV bound, then one token per streaming sequence
and prefill slices for the rest (continuous batching).

Each step every decoding sequence gets one token; what is left of the step's token budget goes to prompts, first
come first served, in slices, so a long newcomer never stalls the sequences already streaming. A group is
admitted only when its sequence ids and the cells it may still need (prompt + replies) fit next to what the
running sequences may still need; otherwise it waits, after idle cached prefixes have been evicted, least
recently used first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from xdai.backends.engine.config import EngineConfig
from xdai.backends.engine.kv import KVCache
from xdai.backends.engine.outputs import EngineError
from xdai.backends.engine.prefix_cache import PrefixCache
from xdai.backends.engine.sequence import Group, Sequence, Status


@dataclass(frozen=True)
class Chunk:
    """Positions [begin, end) of `seq` to evaluate; logits are wanted for positions in [rows_from, end)."""

    seq: Sequence
    begin: int
    end: int
    rows_from: int

    @property
    def rows(self) -> range:
        return range(max(self.rows_from, self.begin), self.end)


@dataclass
class SchedulerOutput:
    chunks: list[Chunk] = field(default_factory=list)
    rejected: list[tuple[Group, EngineError]] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(c.end - c.begin for c in self.chunks)


class Scheduler:
    """Waiting groups and running sequences. Engine thread only."""

    def __init__(self, config: EngineConfig, kv: KVCache, prefix: PrefixCache) -> None:
        self.config = config
        self.kv = kv
        self.prefix = prefix
        self.waiting: deque[Group] = deque()
        self.running: list[Sequence] = []  # admitted, in admission order (followers join at their fork)
        self.forks: dict[int, list[Sequence]] = {}  # leader seq id -> followers waiting for its prompt

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, group: Group) -> None:
        self.waiting.append(group)

    # -- admission ------------------------------------------------------------------------------------------

    def _outstanding(self) -> int:
        """Cells the admitted sequences may still allocate."""
        waiting_forks = sum(f.reserved for fs in self.forks.values() for f in fs)
        return sum(s.reserved for s in self.running) + waiting_forks

    def _admit(self, out: SchedulerOutput) -> None:
        while self.waiting:
            group = self.waiting[0]
            leader = group.leader
            members = group.members
            active = len(self.running) + sum(len(f) for f in self.forks.values())
            if active and active + len(members) > self.config.max_running:
                return
            # a generating leader needs the logits of its last prompt token, a scorer those from score_start - 1
            # (and every request evaluates at least one token)
            limit = min(leader.evaluate, leader.score_start if leader.scoring else leader.evaluate) - 1
            src, n = (None, 0)
            if self.config.prefix_cache and leader.reuses_prefix:
                running = [(s.seq_id, s.tokens[: s.n_computed]) for s in self.running]
                src, n = self.prefix.match(leader.tokens[: leader.evaluate], max(limit, 0), running)
            need = (leader.evaluate - n) + sum(m.params.max_tokens for m in members if m.params is not None)
            while not self._fits(len(members), need, src) and self.prefix.evict(keep=src):
                pass
            if not self._fits(len(members), need, src):
                if not self.running and not self.forks:  # nothing will ever free more room
                    self.waiting.popleft()
                    out.rejected.append((group, EngineError(
                        f"request needs {need} KV cells and {len(members)} sequences; the cache has "
                        f"{self.kv.capacity} cells ({self.kv.free} free) and {self.kv.free_ids} free ids")))
                    continue
                return
            self.waiting.popleft()
            for m in members:
                m.seq_id = self.kv.acquire()
            if n:
                self.kv.share(src, leader.seq_id, n)
            self.prefix.used(src, leader.evaluate, n)
            leader.n_computed = leader.cached = n
            leader.reserved = leader.budget
            leader.status = Status.PREFILL
            self.running.append(leader)
            followers = [m for m in members if m is not leader]
            for f in followers:
                f.reserved = f.params.max_tokens if f.params is not None else 0
            if followers:
                self.forks[leader.seq_id] = followers

    def _fits(self, n_ids: int, cells: int, src: int | None) -> bool:
        return self.kv.free_ids >= n_ids and self.kv.free - self._outstanding() >= cells

    # -- the step -------------------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        self._admit(out)
        decoding = [s for s in self.running if s.status is Status.DECODE]
        budget = (self.config.step_tokens if decoding else self.config.idle_step_tokens) - len(decoding)
        rows = self.config.max_logits_rows - len(decoding)
        out.chunks = [Chunk(s, s.n_computed, s.n_computed + 1, s.n_computed) for s in decoding]
        for s in self.running:
            if s.status is not Status.PREFILL:
                continue
            if budget <= 0 or rows <= 0:
                break
            begin = s.n_computed
            end = min(s.evaluate, begin + budget)
            if s.scoring:
                rows_from = s.score_start - 1
                end = min(end, max(begin, rows_from) + rows)
                rows -= max(0, end - max(begin, rows_from))
            else:
                rows_from = s.evaluate - 1  # the last prompt token's logits give the first reply token
                rows -= 1 if end == s.evaluate else 0
            if end <= begin:
                break
            out.chunks.append(Chunk(s, begin, end, rows_from))
            budget -= end - begin
        return out

    def remove(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        seq.reserved = 0
