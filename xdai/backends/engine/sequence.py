"""A request inside the engine: one llama.cpp sequence (`Sequence`), and the sequences that share one prompt
(`Group`: n candidates evaluate the prompt once, then fork).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum

from xdai.backends.engine.outputs import Finish, ScoreResult, Stream
from xdai.backends.engine.sampling import Sampler, SamplingParams
from xdai.backends.engine.tokenizer import Detokenizer


class Status(Enum):
    WAITING = "waiting"  # not admitted yet, or a candidate waiting for its leader's prompt
    PREFILL = "prefill"  # evaluating its prompt, a slice per step
    DECODE = "decode"  # one token per step
    DONE = "done"


@dataclass(eq=False)
class Sequence:
    """Tokens, how many of them are in the KV cache, and what to do with the logits. Engine thread only (the
    `stream` / `future` are how results leave)."""

    tokens: list[int]
    n_prompt: int
    evaluate: int  # prefill ends when this many tokens are in the cache
    params: SamplingParams | None = None  # None: a scoring (or warming) sequence, which samples nothing
    stream: Stream | None = None
    future: Future[ScoreResult] | None = None
    score_start: int = 0  # scoring: sum log P(tokens[i]) for i >= score_start
    retain: bool = True  # keep the cells as a cached prefix when done
    seq_id: int = -1
    status: Status = Status.WAITING
    n_computed: int = 0  # tokens whose KV is in the cache for this sequence
    cached: int = 0  # prompt tokens that came from the prefix cache
    reserved: int = 0  # cells this sequence may still allocate
    dropped: Finish | None = None  # the caller ended or cancelled it while its prompt was still shared work
    sampler: Sampler | None = None
    detok: Detokenizer | None = None
    text: str = ""
    logprobs: list[float] = field(default_factory=list)

    @property
    def scoring(self) -> bool:
        return self.params is None

    @property
    def reuses_prefix(self) -> bool:
        """A seeded generation evaluates its prompt from the start: a prefix evaluated in other batches moves the
        logits slightly (llama.cpp is not batch-invariant), which could change what the seed samples."""
        return self.params is None or self.params.seed is None

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.n_prompt :]

    @property
    def budget(self) -> int:
        """Cells this sequence can need from admission on: what its prompt still lacks plus its reply."""
        grow = self.params.max_tokens if self.params is not None else 0
        return self.evaluate - self.n_computed + grow


@dataclass(eq=False)
class Group:
    """Sequences with one prompt: the leader evaluates it, the others share its cells once it is done."""

    members: list[Sequence]

    @property
    def leader(self) -> Sequence:
        return self.members[0]

    @property
    def followers(self) -> list[Sequence]:
        return self.members[1:]
