"""GLM's autoregressive blank-infilling objective (Du et al., 2022, section 2.1).

Spans with Poisson(lambda=3) lengths cover about 15% of a text; each is replaced in part A by one [MASK].
Part B holds the spans in shuffled order, each as `<|startofpiece|> s_1 .. s_n` predicting `s_1 .. s_n
<|endofpiece|>`, with the position id of its mask and block positions 1..n+1. Part A attends bidirectionally,
part B causally and to all of part A (`sep` = len(part A)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from xdai.model.glm import GLMModel

IGNORE = -100


@dataclass(frozen=True)
class InfillTokens:
    mask: int
    sop: int
    eop: int
    pad: int


@dataclass
class InfillExample:
    input_ids: list[int]
    positions: list[int]
    block_positions: list[int]
    targets: list[int]  # IGNORE over part A
    sep: int


@dataclass
class InfillBatch:
    input_ids: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, 2, L]
    sep: torch.Tensor  # [B]
    targets: torch.Tensor  # [B, L], IGNORE where nothing is predicted

    def to(self, device: torch.device | str) -> InfillBatch:
        return InfillBatch(*(t.to(device) for t in (self.input_ids, self.position_ids, self.sep, self.targets)))


def sample_spans(length: int, rng: np.random.Generator, mask_ratio: float = 0.15,
                 poisson_lambda: float = 3.0) -> list[tuple[int, int]]:
    """Non-overlapping (start, end) spans covering about `mask_ratio` of `length` tokens, in text order."""
    budget = max(1, round(mask_ratio * length))
    lengths: list[int] = []
    while sum(lengths) < budget:
        lengths.append(int(min(max(1, rng.poisson(poisson_lambda)), budget - sum(lengths))))
    rng.shuffle(lengths)
    free = length - sum(lengths)
    gaps = np.sort(rng.integers(0, free + 1, size=len(lengths)))  # unmasked tokens before each span
    spans, cursor, used = [], 0, 0
    for gap, n in zip(gaps, lengths, strict=True):
        cursor += int(gap) - used
        used = int(gap)
        spans.append((cursor, cursor + n))
        cursor += n
    return spans


def make_example(tokens: Sequence[int], ids: InfillTokens, rng: np.random.Generator, mask_ratio: float = 0.15,
                 poisson_lambda: float = 3.0) -> InfillExample:
    spans = sample_spans(len(tokens), rng, mask_ratio, poisson_lambda)
    part_a: list[int] = []
    mask_at: list[int] = []
    cursor = 0
    for start, end in spans:
        part_a.extend(tokens[cursor:start])
        mask_at.append(len(part_a))
        part_a.append(ids.mask)
        cursor = end
    part_a.extend(tokens[cursor:])
    inputs, positions, blocks = list(part_a), list(range(len(part_a))), [0] * len(part_a)
    targets = [IGNORE] * len(part_a)
    for k in rng.permutation(len(spans)):
        start, end = spans[k]
        span = list(tokens[start:end])
        inputs += [ids.sop, *span]
        targets += [*span, ids.eop]
        positions += [mask_at[k]] * (len(span) + 1)
        blocks += list(range(1, len(span) + 2))
    return InfillExample(inputs, positions, blocks, targets, sep=len(part_a))


def collate(examples: Sequence[InfillExample], pad: int) -> InfillBatch:
    """Right-pad to the longest example: padding comes after part B, where no real query can see it."""
    length = max(len(e.input_ids) for e in examples)
    b = len(examples)
    input_ids = torch.full((b, length), pad, dtype=torch.long)
    position_ids = torch.zeros((b, 2, length), dtype=torch.long)
    targets = torch.full((b, length), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids)
        position_ids[i, 0, :n] = torch.tensor(e.positions)
        position_ids[i, 1, :n] = torch.tensor(e.block_positions)
        targets[i, :n] = torch.tensor(e.targets)
    return InfillBatch(input_ids, position_ids, torch.tensor([e.sep for e in examples]), targets)


def infilling_loss(model: GLMModel, batch: InfillBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy over part B plus the scaled MoE load-balancing loss."""
    out = model(batch.input_ids, batch.position_ids, batch.sep)
    ce = F.cross_entropy(out.logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE)
    loss = ce
    stats = {"ce": float(ce.detach()), "moe_dropped": int(out.moe_dropped)}
    if out.moe_aux_loss is not None:
        loss = loss + model.config.moe_aux_loss_coef * out.moe_aux_loss
        stats["moe_aux"] = float(out.moe_aux_loss.detach())
    return loss, stats


@torch.no_grad()
def infilling_accuracy(model: GLMModel, batch: InfillBatch, eop: int) -> dict[str, float]:
    """Teacher-forced accuracy on span tokens (end-of-piece targets excluded), overall and for the first token
    of each span (which only part A, through the 2D positions, can tell)."""
    logits = model(batch.input_ids, batch.position_ids, batch.sep).logits
    pred = logits.argmax(-1)
    span = (batch.targets != IGNORE) & (batch.targets != eop)
    first = span & (batch.position_ids[:, 1] == 1)
    correct = pred == batch.targets
    return {
        "span_accuracy": float(correct[span].float().mean()),
        "first_token_accuracy": float(correct[first].float().mean()),
    }
