"""The engine: one per loaded model. Callers on any thread submit prompts; one background thread runs the loop

    plan = scheduler.schedule()      which tokens of which sequences go into the next decode
    rows = runner.execute(plan)      one llama_decode over all of them
    self._update(plan, rows)         sample, stream, finish, free or cache

so requests join the running batch between two decode steps and leave it when they finish or are cancelled.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from collections.abc import Sequence as Seq
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from xdai.backends.engine.config import EngineConfig
from xdai.backends.engine.kv import KVCache
from xdai.backends.engine.outputs import Completion, EngineError, Finish, ScoreResult, Stream, TokenEvent
from xdai.backends.engine.prefix_cache import PrefixCache, PrefixStats
from xdai.backends.engine.runner import ModelRunner
from xdai.backends.engine.sampling import Sampler, SamplingParams, token_logprobs
from xdai.backends.engine.scheduler import Chunk, Scheduler, SchedulerOutput
from xdai.backends.engine.sequence import Group, Sequence, Status
from xdai.backends.engine.tokenizer import Detokenizer

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class EngineStats:
    steps: int
    prefill_tokens: int
    decode_tokens: int
    running: int
    waiting: int
    kv_used: int
    kv_capacity: int
    cached_prefixes: int
    prefix: PrefixStats


class Engine:
    """Generate and score on one model, many sequences at a time. Thread-safe; the loop owns llama.cpp."""

    def __init__(self, model_path: str | Path, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.model_path = Path(model_path)
        self.runner = ModelRunner(model_path, self.config)
        self.tokenizer = self.runner.tokenizer
        self.kv = KVCache(self.runner.memory, self.runner.kv_cells, self.config.max_seqs)
        self.prefix = PrefixCache(self.kv, self.config.min_prefix)
        self.scheduler = Scheduler(self.config, self.kv, self.prefix)
        self._lock = threading.Condition()
        self._inbox: list[Callable[[], None]] = []
        self._by_stream: dict[int, Sequence] = {}
        self._closed = False
        self._steps = self._prefill_tokens = self._decode_tokens = 0
        self._thread = threading.Thread(target=self._loop, name=f"xdai-engine-{self.model_path.stem}", daemon=True)
        self._thread.start()

    # -- submitting (any thread) ----------------------------------------------------------------------------

    def generate(self, prompt: Seq[int], params: SamplingParams | Seq[SamplingParams]) -> list[Stream]:
        """Decode one continuation of `prompt` per `SamplingParams` (candidates share the prompt's evaluation);
        one `Stream` each, in order."""
        many = [params] if isinstance(params, SamplingParams) else list(params)
        prompt = list(prompt) or [self.tokenizer.separator()]
        if not many:
            raise ValueError("generate needs at least one SamplingParams")
        if len(many) > self.config.max_running:
            raise ValueError(f"{len(many)} candidates exceed max_running={self.config.max_running}")
        room = self.config.n_ctx - len(prompt)
        if room < 1:
            raise EngineError(f"prompt of {len(prompt)} tokens leaves no room in the {self.config.n_ctx}-token window")
        members = []
        for p in many:
            p = dataclasses.replace(p, max_tokens=max(1, min(p.max_tokens, room)))
            stream = Stream(self._control)
            seq = Sequence(tokens=list(prompt), n_prompt=len(prompt), evaluate=len(prompt), params=p, stream=stream,
                           retain=self.config.prefix_cache)
            members.append(seq)
        self._submit(Group(members))
        return [m.stream for m in members if m.stream is not None]

    def score(self, tokens: Seq[int], start: int, *, retain: bool = False) -> Future[ScoreResult]:
        """Sum of log P(tokens[i] | tokens[:i]) for i >= `start` (1 <= start < len(tokens))."""
        if not 1 <= start < len(tokens):
            raise ValueError(f"score needs 1 <= start < len(tokens), got start={start} for {len(tokens)} tokens")
        if len(tokens) > self.config.n_ctx:
            raise EngineError(f"{len(tokens)} tokens do not fit the {self.config.n_ctx}-token window")
        future: Future[ScoreResult] = Future()
        # all of it is evaluated, with rows from start - 1 to the end, as the one-sequence path does: the batch
        # shapes, and so llama.cpp's kernels and numbers, are the same
        seq = Sequence(tokens=list(tokens), n_prompt=len(tokens), evaluate=len(tokens), future=future,
                       score_start=start, retain=retain and self.config.prefix_cache)
        self._submit(Group([seq]))
        return future

    def score_many(self, items: Seq[tuple[Seq[int], int]]) -> list[ScoreResult]:
        """Score several (tokens, start) pairs in the same batches; blocks until all are done."""
        futures = [self.score(tokens, start) for tokens, start in items]
        return [f.result() for f in futures]

    def warm(self, tokens: Seq[int]) -> Future[ScoreResult]:
        """Evaluate `tokens` and keep them as a cached prefix (e.g. a bot's static prompt), scoring nothing."""
        future: Future[ScoreResult] = Future()
        seq = Sequence(tokens=list(tokens), n_prompt=len(tokens), evaluate=len(tokens), future=future,
                       score_start=len(tokens) + 1, retain=True)
        self._submit(Group([seq]))
        return future

    def stats(self) -> EngineStats:
        return self.call(lambda: EngineStats(
            steps=self._steps, prefill_tokens=self._prefill_tokens, decode_tokens=self._decode_tokens,
            running=len(self.scheduler.running), waiting=len(self.scheduler.waiting), kv_used=self.kv.used,
            kv_capacity=self.kv.capacity, cached_prefixes=len(self.prefix),
            prefix=dataclasses.replace(self.prefix.stats)))

    def prefix_stats(self) -> PrefixStats:
        """The prefix cache's counters without waiting for the loop (a snapshot read between two updates)."""
        return dataclasses.replace(self.prefix.stats)

    def kv_positions(self) -> dict[int, int]:
        """Largest position llama.cpp holds for each sequence id (-1: empty), read between two steps."""
        return self.call(lambda: {s: self.runner.seq_pos_max(s) for s in range(self.config.max_seqs)})

    def clear_cache(self) -> None:
        """Drop every cached prefix (running sequences keep theirs)."""
        self.call(self.prefix.clear)

    def call(self, fn: Callable[[], T], timeout: float | None = 60.0) -> T:
        """Run `fn` on the engine's thread between two steps and return its result."""
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._post(run)
        return future.result(timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout=30)
        self.runner.close()

    def _submit(self, group: Group) -> None:
        def add() -> None:
            for m in group.members:
                if m.stream is not None:
                    self._by_stream[id(m.stream)] = m
            self.scheduler.add(group)

        self._post(add)

    def _control(self, stream: Stream, finish: Finish) -> None:
        try:
            self._post(lambda: self._drop(stream, finish))
        except EngineError:  # closed: the stream was ended with it
            pass

    def _post(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                raise EngineError("engine is closed")
            self._inbox.append(fn)
            self._lock.notify()

    # -- the loop (engine thread) ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._inbox and not self.scheduler.has_work and not self._closed:
                    self._lock.wait()
                if self._closed:
                    break
                inbox, self._inbox = self._inbox, []
            for fn in inbox:
                try:
                    fn()
                except Exception:  # a bad request or control must not stop the loop that serves everyone
                    log.exception("engine request failed")
            if self.scheduler.has_work:
                try:
                    self.step()
                except Exception as exc:  # a failed decode fails the sequences in it, not the engine
                    log.exception("engine step failed")
                    self._fail_running(exc)
        self._shutdown()

    def step(self) -> None:
        plan = self.scheduler.schedule()
        for group, error in plan.rejected:
            for m in group.members:
                self._finish_error(m, error)
        if not plan.chunks:
            if self.scheduler.running:  # cannot happen: a running sequence always has a token to evaluate
                raise RuntimeError("scheduler planned nothing while sequences are running")
            with self._lock:  # everything waits for room that only a caller can make: wait for the inbox
                while not self._inbox and not self._closed:
                    self._lock.wait()
            return
        rows = self.runner.execute(plan)
        self._steps += 1
        self._update(plan, rows)

    def _update(self, plan: SchedulerOutput, rows: dict[int, list[int]]) -> None:
        for k, chunk in enumerate(plan.chunks):
            seq = chunk.seq
            n = chunk.end - chunk.begin
            self.kv.appended(seq.seq_id, n)
            seq.n_computed = chunk.end
            seq.reserved = max(0, seq.reserved - n)
            if seq.status is Status.DECODE:
                self._decode_tokens += n
            else:
                self._prefill_tokens += n
            if seq.scoring:
                self._scored(seq, chunk, rows[k])
            elif seq.n_computed == len(seq.tokens):  # its last token's logits are here: sample the next one
                if seq.status is Status.PREFILL:
                    self._fork(seq, rows[k][-1])
                if seq.status is not Status.DONE:  # (a dropped leader leaves once its candidates have forked)
                    self._sample(seq, rows[k][-1])

    def _scored(self, seq: Sequence, chunk: Chunk, idx: list[int]) -> None:
        if idx:
            positions = list(chunk.rows)
            logits = np.stack([self.runner.logits(i) for i in idx])
            if positions[-1] == len(seq.tokens) - 1:  # the last row predicts nothing: it is only kept for shape
                positions, logits = positions[:-1], logits[:-1]
            if positions:
                targets = np.asarray([seq.tokens[p + 1] for p in positions])
                seq.logprobs.extend(token_logprobs(logits, targets).tolist())
        if seq.n_computed >= seq.evaluate:
            self._done(seq, None)

    def _fork(self, leader: Sequence, idx: int) -> None:
        """The leader's prompt is evaluated: its candidates share its cells and start decoding."""
        leader.status = Status.DECODE
        for f in self.scheduler.forks.pop(leader.seq_id, []):
            self.kv.share(leader.seq_id, f.seq_id, leader.n_computed)
            f.n_computed, f.cached, f.status = leader.n_computed, leader.cached, Status.DECODE
            self.scheduler.running.append(f)
            self._sample(f, idx)
        if leader.dropped is not None:
            self._done(leader, leader.dropped)

    def _sample(self, seq: Sequence, idx: int) -> None:
        params = seq.params
        assert params is not None
        if seq.sampler is None:
            seq.status = Status.DECODE
            seq.sampler = Sampler(params, self.tokenizer.n_vocab)
            seq.detok = Detokenizer(self.tokenizer)
        token = seq.sampler.sample(self.runner.ctx, idx)
        logprob = None
        if params.logprobs:
            logprob = float(token_logprobs(self.runner.logits(idx)[None, :], np.asarray([token]))[0])
        if self.tokenizer.is_eog(token) and not params.ignore_eog:
            self._done(seq, Finish.EOG)
            return
        seq.tokens.append(token)
        if logprob is not None:
            seq.logprobs.append(logprob)
        assert seq.detok is not None
        text = seq.detok.feed(token)
        seq.text += text
        assert seq.stream is not None
        seq.stream._push(TokenEvent(token, text, logprob))
        if params.stop and any(s in seq.text[-(len(s) + len(text)):] for s in params.stop):
            self._done(seq, Finish.STOP)
        elif len(seq.generated) >= params.max_tokens:
            self._done(seq, Finish.LENGTH)

    def _drop(self, stream: Stream, finish: Finish) -> None:
        """A caller ended or cancelled a stream."""
        seq = self._by_stream.get(id(stream))
        if seq is None or seq.status is Status.DONE:
            return
        if seq.status is Status.WAITING:
            for group in self.scheduler.waiting:
                if seq in group.members:
                    group.members.remove(seq)
                    if not group.members:
                        self.scheduler.waiting.remove(group)
                    break
            else:  # a candidate waiting for its leader's prompt: it holds an id but no cells yet
                for leader_id, followers in list(self.scheduler.forks.items()):
                    if seq in followers:
                        followers.remove(seq)
                        if not followers:  # nobody needs the prompt any more: a dropped leader can go
                            del self.scheduler.forks[leader_id]
                            for leader in self.scheduler.running:
                                if leader.seq_id == leader_id and leader.dropped is not None:
                                    self._done(leader, leader.dropped)
                                    break
            self._done(seq, finish)
        elif seq.status is Status.PREFILL and self.scheduler.forks.get(seq.seq_id):
            seq.dropped = finish  # its candidates still need the prompt: finish it for the caller now, free later
            self._complete(seq, finish)
        else:
            self._done(seq, finish)

    def _done(self, seq: Sequence, finish: Finish | None) -> None:
        """The sequence leaves the batch: its cells become a cached prefix, or are freed at once."""
        if seq.status is Status.DONE:
            return
        admitted = seq.seq_id >= 0
        self.scheduler.remove(seq)
        seq.status = Status.DONE
        if seq.sampler is not None:
            seq.sampler.free()
        if admitted:
            if seq.retain and finish is not Finish.CANCELLED and seq.dropped is not Finish.CANCELLED:
                self.prefix.add(seq.seq_id, seq.tokens[: seq.n_computed])
            else:
                self.kv.release(seq.seq_id)
        self._complete(seq, finish)

    def _complete(self, seq: Sequence, finish: Finish | None) -> None:
        if seq.future is not None:
            if not seq.future.done():
                logprobs = seq.logprobs
                seq.future.set_result(ScoreResult(float(np.sum(logprobs)) if logprobs else 0.0, logprobs, seq.cached))
            return
        if seq.stream is None or seq.stream.done:
            return
        self._by_stream.pop(id(seq.stream), None)
        assert finish is not None
        tail = seq.detok.flush() if seq.detok is not None else ""
        if tail:
            seq.text += tail
            seq.stream._push(TokenEvent(-1, tail, None))
        params = seq.params
        seq.stream._finish(Completion(
            tokens=list(seq.generated), text=seq.text, finish=finish, prompt_tokens=seq.n_prompt,
            cached_tokens=seq.cached, logprobs=list(seq.logprobs) if params is not None and params.logprobs else None))

    def _finish_error(self, seq: Sequence, error: BaseException) -> None:
        if seq.status is not Status.DONE and seq.seq_id >= 0:
            self.scheduler.remove(seq)
            self.kv.release(seq.seq_id)
        seq.status = Status.DONE
        if seq.sampler is not None:
            seq.sampler.free()
        if seq.future is not None and not seq.future.done():
            seq.future.set_exception(error)
        if seq.stream is not None and not seq.stream.done:
            self._by_stream.pop(id(seq.stream), None)
            seq.stream._finish(None, error)

    def _fail_running(self, exc: BaseException) -> None:
        error = exc if isinstance(exc, EngineError) else EngineError(f"decode failed: {exc}")
        for seq in list(self.scheduler.running):
            self._finish_error(seq, error)
        for followers in self.scheduler.forks.values():
            for f in followers:
                self._finish_error(f, error)
        self.scheduler.forks.clear()

    def _shutdown(self) -> None:
        error = EngineError("engine closed")
        for group in self.scheduler.waiting:
            for m in group.members:
                self._finish_error(m, error)
        self.scheduler.waiting.clear()
        self._fail_running(error)
        for fn in self._inbox:  # calls posted after the last step: answer them so no caller waits forever
            fn()

    def __repr__(self) -> str:
        return f"Engine({self.model_path.name}, {self.config})"
