"""Blank infilling with GLM: batched, KV-cached, sampled, streamed.

Part A is the prompt with its [MASK]/[sMASK]/[gMASK] tokens. Each mask is filled in order: the span starts with
`<|startofpiece|>` at the mask's position id and block position 1, its tokens continue with block positions
2, 3, ... and it ends when the model emits `<|endofpiece|>`; the next mask's span then starts with its own
`<|startofpiece|>`. Rows of a batch keep their own masks and lengths (no left padding: see `KVCache`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from xdai.generation import GenerationSettings
from xdai.model.glm import GLMModel
from xdai.model.tokenizer import MASK_TOKENS


@dataclass(frozen=True)
class SpecialIds:
    sop: int
    eop: int
    masks: tuple[int, ...]
    pad: int = 0
    vocab_limit: int | None = None  # ids >= this are never sampled (padding rows of the embedding matrix)
    banned: tuple[int, ...] = ()  # never sampled either: command tokens that make no sense inside a span

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialIds:
        banned = tuple(sorted(i for i in tokenizer.command_ids.values() if i != tokenizer.eop_id))
        return cls(tokenizer.sop_id, tokenizer.eop_id, tokenizer.mask_ids, tokenizer.pad_id, tokenizer.vocab_size,
                   banned)


@dataclass
class RowState:
    masks: list[int]  # positions of the mask tokens in part A
    span: int = 0  # which mask is being filled
    block: int = 1  # block position of the next input token
    done: bool = False
    spans: list[list[int]] = field(default_factory=list)


def sample_next(logits: torch.Tensor, settings: GenerationSettings, seen: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token per row from `[B, V]` logits: repetition penalty (on `seen` ids), temperature, top-k, top-p.
    Temperature <= 0 is greedy."""
    logits = logits.float()
    penalty = settings.repetition_penalty
    if seen is not None and penalty and penalty != 1.0:
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, penalised, logits)
    if settings.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / settings.temperature
    if settings.top_k and 0 < settings.top_k < logits.shape[-1]:
        kth = logits.topk(settings.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p is not None and 0 < settings.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative - sorted_logits.softmax(-1) >= settings.top_p  # keep the first token past top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _count(stats: dict[str, int] | None, out) -> None:
    if stats is not None:
        stats["forward_calls"] = stats.get("forward_calls", 0) + 1
        stats["moe_dropped"] = stats.get("moe_dropped", 0) + int(out.moe_dropped)


def _forward_full(model: GLMModel, seqs: list[list[int]], positions: list[list[tuple[int, int]]],
                  seps: list[int], pad: int, stats: dict[str, int] | None = None) -> torch.Tensor:
    """Logits of each row's last token from a full forward (no cache): rows right-padded at the very end."""
    device = model.word_embeddings.weight.device
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    pos = torch.zeros((len(seqs), 2, length), dtype=torch.long)
    for b, (s, p) in enumerate(zip(seqs, positions, strict=True)):
        ids[b, : len(s)] = torch.tensor(s)
        pos[b, :, : len(s)] = torch.tensor(p).t()
    out = model(ids.to(device), pos.to(device), torch.tensor(seps, device=device))
    _count(stats, out)
    logits = out.logits
    last = torch.tensor([len(s) - 1 for s in seqs], device=device)
    return logits[torch.arange(len(seqs), device=device), last]


@torch.inference_mode()
def stream_fill(model: GLMModel, prompts: Sequence[Sequence[int]], special: SpecialIds,
                settings: GenerationSettings, use_cache: bool = True,
                stats: dict[str, int] | None = None) -> Iterator[list[int | None]]:
    """Yield, per decoding step, the token each row produced (None for rows already finished).

    Stops when every row has filled all its masks or after `settings.max_tokens` steps. Break out of the
    iteration to stop early. `stats`, when given, accumulates `forward_calls` and `moe_dropped` (token-expert
    assignments dropped by MoE capacity limits over all forwards).
    """
    cfg = model.config
    device = model.word_embeddings.weight.device
    rows = []
    for b, prompt in enumerate(prompts):
        masks = [i for i, t in enumerate(prompt) if t in special.masks]
        if not masks:
            raise ValueError(f"prompt {b} has no [MASK], [sMASK] or [gMASK] token to fill")
        rows.append(RowState(masks=masks, spans=[[] for _ in masks]))
    lens = [len(p) for p in prompts]
    max_tokens = settings.max_tokens
    if max(lens) + 1 > cfg.max_sequence_length or max_tokens + 1 > cfg.max_sequence_length:
        raise ValueError(f"prompt of {max(lens)} tokens or max_tokens {max_tokens} exceeds the model's "
                         f"max_sequence_length {cfg.max_sequence_length}")
    batch = len(prompts)
    vocab = model.word_embeddings.weight.shape[0]
    generator = None
    if settings.seed is not None:
        generator = torch.Generator(device=device).manual_seed(settings.seed)
    seen = torch.zeros((batch, vocab), dtype=torch.bool, device=device)
    for b, p in enumerate(prompts):
        seen[b, torch.tensor(list(p), dtype=torch.long, device=device)] = True
    banned = None
    if (special.vocab_limit is not None and special.vocab_limit < vocab) or special.banned:
        banned = torch.zeros(vocab, dtype=torch.bool, device=device)
        banned[special.vocab_limit or vocab:] = True
        banned[list(special.banned)] = True
    sep = torch.tensor(lens, device=device)

    # Step 0: part A and the first <|startofpiece|>.
    seqs = [[*p, special.sop] for p in prompts]
    positions = [[(i, 0) for i in range(len(p))] + [(r.masks[0], 1)] for p, r in zip(prompts, rows, strict=True)]
    cache = None
    if use_cache:
        length = max(lens) + 1
        ids = torch.full((batch, length), special.pad, dtype=torch.long)
        pos = torch.zeros((batch, 2, length), dtype=torch.long)
        for b in range(batch):
            ids[b, : lens[b] + 1] = torch.tensor(seqs[b])
            pos[b, :, : lens[b] + 1] = torch.tensor(positions[b]).t()
        cache = model.new_cache(batch, max(lens) + 1 + max_tokens)
        out = model(ids.to(device), pos.to(device), sep, cache=cache)
        _count(stats, out)
        logits = out.logits[torch.arange(batch, device=device), sep]
        cache.lengths = sep + 1
    else:
        logits = _forward_full(model, seqs, positions, lens, special.pad, stats)

    for _ in range(max_tokens):
        if banned is not None:
            logits = logits.masked_fill(banned, float("-inf"))
        tokens = sample_next(logits, settings, seen, generator).tolist()
        step: list[int | None] = []
        next_ids, next_pos = [], []
        for b, r in enumerate(rows):
            if r.done:
                step.append(None)
                next_ids.append(special.pad)
                next_pos.append((0, 0))
                continue
            t = tokens[b]
            step.append(t)
            seen[b, t] = True
            if t == special.eop:
                r.span += 1
                r.block = 1
                if r.span == len(r.masks):
                    r.done = True
                    next_ids.append(special.pad)
                    next_pos.append((0, 0))
                    continue
                t = special.sop
            else:
                r.spans[r.span].append(t)
                r.block += 1
            next_ids.append(t)
            next_pos.append((r.masks[r.span], r.block))
            seqs[b].append(t)
            positions[b].append(next_pos[-1])
        yield step
        if all(r.done for r in rows):
            return
        if cache is not None:
            ids = torch.tensor(next_ids, device=device)[:, None]
            pos = torch.tensor(next_pos, device=device)[:, :, None]
            out = model(ids, pos, cache=cache)
            _count(stats, out)
            logits = out.logits[:, 0]
        else:
            logits = _forward_full(model, seqs, positions, lens, special.pad, stats)


def fill_ids(model: GLMModel, prompts: Sequence[Sequence[int]], special: SpecialIds,
             settings: GenerationSettings, use_cache: bool = True,
             stats: dict[str, int] | None = None) -> list[list[list[int]]]:
    """The spans (token ids) filling each mask of each prompt."""
    spans: list[list[list[int]]] = [[[]] for _ in prompts]
    for step in stream_fill(model, prompts, special, settings, use_cache, stats):
        for b, t in enumerate(step):
            if t is None:
                continue
            if t == special.eop:
                spans[b].append([])
            else:
                spans[b][-1].append(t)
    counts = [sum(t in special.masks for t in p) for p in prompts]
    return [s[:n] + [[] for _ in range(n - len(s))] for s, n in zip(spans, counts, strict=True)]


@dataclass
class Filled:
    text: str  # the prompt with each mask replaced by its span
    spans: list[str]


def fill_text(model: GLMModel, texts: Sequence[str], settings: GenerationSettings,
              use_cache: bool = True, tokenizer=None, stats: dict[str, int] | None = None) -> list[Filled]:
    """Fill every mask of every text (batched)."""
    tok = tokenizer or model.tokenizer
    if tok is None:
        raise ValueError("no tokenizer: the checkpoint directory has no sentencepiece model")
    prompts = [tok.encode_prompt(t) for t in texts]
    results = []
    for text, spans in zip(texts, fill_ids(model, prompts, SpecialIds.from_tokenizer(tok), settings, use_cache,
                                            stats),
                           strict=True):
        pieces = [tok.decode(s) for s in spans]
        results.append(Filled(text=_replace_masks(text, pieces, tok), spans=pieces))
    return results


def _replace_masks(text: str, pieces: list[str], tok) -> str:
    out, k = [], 0
    for part in tok.split_commands(text):
        if part in MASK_TOKENS and k < len(pieces):
            out.append(pieces[k])
            k += 1
        else:
            out.append(part)
    return "".join(out)


def stream_spans(model: GLMModel, text: str | Sequence[int], settings: GenerationSettings, tokenizer=None,
                 use_cache: bool = True, stats: dict[str, int] | None = None) -> Iterator[tuple[int, str]]:
    """Stream the fill of one text (or of an already encoded part A) as (mask index, new text) pieces, decoded
    incrementally."""
    tok = tokenizer or model.tokenizer
    if tok is None:
        raise ValueError("no tokenizer: the checkpoint directory has no sentencepiece model")
    special = SpecialIds.from_tokenizer(tok)
    span, ids, emitted = 0, [], ""
    prompt = tok.encode_prompt(text) if isinstance(text, str) else list(text)
    for (t,) in stream_fill(model, [prompt], special, settings, use_cache, stats):
        if t is None:
            break
        if t == special.eop:
            span, ids, emitted = span + 1, [], ""
            continue
        ids.append(t)
        decoded = tok.decode(ids)
        if decoded.endswith("\ufffd") or not decoded.startswith(emitted):
            continue  # an incomplete byte sequence: wait for the next token
        if len(decoded) > len(emitted):
            yield span, decoded[len(emitted):]
            emitted = decoded


@torch.inference_mode()
def span_logprob(model: GLMModel, prompt: Sequence[int], span: Sequence[int], special: SpecialIds) -> float:
    """Sum of log p(span token | part A, previous span tokens) for the first mask of `prompt`."""
    masks = [i for i, t in enumerate(prompt) if t in special.masks]
    if not masks:
        raise ValueError("prompt has no mask token")
    if not span:
        return 0.0
    device = model.word_embeddings.weight.device
    inputs = [*prompt, special.sop, *span[:-1]]
    a = len(prompt)
    pos = [list(range(a)) + [masks[0]] * len(span), [0] * a + list(range(1, len(span) + 1))]
    ids = torch.tensor([inputs], device=device)
    logits = model(ids, torch.tensor([pos], device=device), torch.tensor([a], device=device)).logits[0, a:]
    logp = logits.float().log_softmax(-1)
    return float(logp.gather(-1, torch.tensor(span, device=device)[:, None]).sum())
