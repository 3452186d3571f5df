"""How a sequence picks its next token: `SamplingParams` and a per-sequence llama.cpp sampler chain.

The chain is the one `llama_cpp.Llama.generate` builds (repetition penalty over the last 64 generated tokens,
then top-k, top-p, temperature and a seeded draw; greedy at temperature 0), so a seeded request samples what
the one-sequence path sampled. Each sequence owns its chain: its own penalty history and its own random state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import llama_cpp
import numpy as np

PENALTY_LAST_N = 64  # llama_cpp.Llama's last_n_tokens_size


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repetition_penalty: float = 1.15
    max_tokens: int = 96
    stop: tuple[str, ...] = ()  # generated text containing one of these ends the sequence (the text keeps it)
    seed: int | None = None  # None: a fresh random seed
    logprobs: bool = False  # report log P(token) of each sampled token (costs a log-softmax per token)
    ignore_eog: bool = False  # keep decoding past end-of-generation tokens (benchmarks: a fixed length)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class Sampler:
    """One sequence's sampler chain; `sample` reads the logits row `idx` of the last decode."""

    _chain: llama_cpp.llama_sampler_p | None = None

    def __init__(self, params: SamplingParams, n_vocab: int) -> None:
        self.seed = params.seed if params.seed is not None else random.randrange(2**32)
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        add(chain, llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, params.repetition_penalty, 0.0, 0.0))
        if params.greedy:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
            add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
            add(chain, llama_cpp.llama_sampler_init_dist(self.seed))
        self._chain = chain

    def sample(self, ctx: llama_cpp.llama_context_p, idx: int) -> int:
        assert self._chain is not None, "sampler already freed"
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, idx))

    def free(self) -> None:
        chain, self._chain = self._chain, None
        if chain is not None:
            llama_cpp.llama_sampler_free(chain)

    def __del__(self) -> None:
        self.free()


def token_logprobs(rows: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """log softmax(rows[i])[tokens[i]] for each row, in float64 so that long vocabularies keep their precision."""
    rows = np.asarray(rows, dtype=np.float64)
    top = rows.max(axis=1, keepdims=True)
    lse = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
    return rows[np.arange(len(tokens)), tokens] - lse
