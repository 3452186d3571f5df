"""Log-likelihood bookkeeping shared by the causal backends.

`score(context, continuation)` is the sum of log P(token) over the tokens that carry the continuation, each
conditioned on everything before it. The boundary is taken from the canonical tokenization of the whole text:
when the tokenizer merges the last characters of the context with the first of the continuation, the merged
token belongs to the continuation (as lm-evaluation-harness does), so no continuation character goes unscored
and the model is never fed a token split it did not see in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def continuation_start(context_ids: Sequence[int], full_ids: Sequence[int]) -> int:
    """Index into `full_ids` of the first token that carries continuation text."""
    n = 0
    for a, b in zip(context_ids, full_ids, strict=False):
        if a != b:
            break
        n += 1
    return n


def token_logprob(logits: np.ndarray, token: int) -> float:
    """log softmax(logits)[token], computed in float64 so that long vocabularies do not lose precision."""
    row = np.asarray(logits, dtype=np.float64)
    top = row.max()
    return float(row[token] - top - np.log(np.exp(row - top).sum()))
