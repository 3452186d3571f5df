"""`llama_cpp`: GGUF models on CPU through llama-cpp-python — the offline default backend.

A causal model has no [MASK]: `infill.before` (the prompt ending with the bot's speaker tag) is continued and the
continuation is trimmed to the bot's turn. The grounded post-response `infill.after` is honoured by reranking
(`xdai.rerank`), which calls `score`. Loaded models are cached per process and shared by every backend instance
that names the same file; each shared model has one lock, since a llama.cpp context serves one sequence at a time.
"""

from __future__ import annotations

import codecs
import logging
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

# llama.cpp's CPU backend is OpenMP. Busy-waiting threads turn a shared machine's decode from ~10 tok/s into
# ~0.5 tok/s (measured here under load with 2 threads); passive waiting must be set before libgomp loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402

from xdai.backends.base import GenerationSettings, Infill  # noqa: E402
from xdai.backends.models import resolve_model  # noqa: E402
from xdai.backends.scoring import continuation_start, token_logprob  # noqa: E402
from xdai.backends.stream import Emit, TokenStream, pump, stream_in_thread  # noqa: E402

log = logging.getLogger(__name__)

_LOADED: dict[tuple[str, int, int, int], tuple[llama_cpp.Llama, threading.Lock]] = {}
_LOAD_LOCK = threading.Lock()
PREFILL_SLICE = 128  # prompt tokens evaluated between two looks at the cancel flag
MAX_ROWS = 64  # logits rows per scoring decode (each row is n_vocab floats: 0.6 MB for Qwen)


def all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_llama(path: str | Path, n_ctx: int, threads: int, n_batch: int = 512) -> tuple[llama_cpp.Llama, threading.Lock]:
    """The process-wide loaded model for these settings, loading it on first use."""
    key = (str(Path(path).resolve()), n_ctx, threads, n_batch)
    with _LOAD_LOCK:
        if key not in _LOADED:
            llm = llama_cpp.Llama(
                model_path=key[0],
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
            _LOADED[key] = (llm, threading.Lock())
        return _LOADED[key]


class LlamaCppBackend:
    """Continue a prompt with a GGUF model; score continuations by their log-likelihood."""

    name = "llama_cpp"

    def __init__(
        self,
        model: str = "default",
        *,
        n_ctx: int | None = 4096,
        threads: int | None = 0,
        n_batch: int = 512,
        cache_dir: str | Path | None = None,
    ):
        """`n_ctx` the context window; `threads` 0 or None: all cores; `cache_dir`: where the bundled model is
        assembled (None: ~/.cache/xdai). The configuration's ``backend`` section supplies them
        (`xdai.config.Config.backend_options`)."""
        self.model = model
        self.model_path = resolve_model(model, cache_dir)
        self.n_ctx = n_ctx or 4096
        self.threads = threads or all_cores()
        self.n_batch = n_batch
        self.llm, self._lock = load_llama(self.model_path, self.n_ctx, self.threads, n_batch)
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._batch: llama_cpp.llama_batch | None = llama_cpp.llama_batch_init(n_batch, 0, 1)

    def __del__(self) -> None:
        batch, self._batch = getattr(self, "_batch", None), None
        if batch is not None:
            llama_cpp.llama_batch_free(batch)

    # -- text <-> tokens -------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Prompt text is data: special-token spellings inside it (e.g. "<|im_end|>") stay plain text."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def _separator(self) -> int:
        """What an empty text is conditioned on: BOS, or EOS for models without one (Qwen)."""
        return self.llm.token_bos() if self.llm.token_bos() >= 0 else self.llm.token_eos()

    # -- generation ------------------------------------------------------------------------------------------

    def fill(self, infill: Infill, settings: GenerationSettings) -> TokenStream:
        """Stream the continuation of `infill.before`, trimmed to the bot's turn; `.tokens` counts what the model
        generated for it."""
        stream = TokenStream()
        return stream.of(stream_in_thread(lambda emit, cancel: self._generate(infill.before, settings, emit, cancel,
                                                                              stream)))

    def _generate(self, prompt: str, settings: GenerationSettings, emit: Emit, cancel: threading.Event,
                  counter: TokenStream) -> None:
        tokens = self._fit(self.tokenize(prompt) or [self._separator()], room=settings.max_tokens)
        with self._lock:
            if not self._prefill(tokens, cancel):
                return
            self.llm.set_seed(settings.seed if settings.seed is not None else random.randrange(2**32))
            tokens_out = self.llm.generate(
                tokens,
                temp=max(settings.temperature, 0.0),
                top_p=settings.top_p,
                top_k=settings.top_k,
                min_p=0.0,
                typical_p=1.0,
                repeat_penalty=settings.repetition_penalty,
            )
            pump(self._texts(tokens_out, settings.max_tokens, counter), settings.stop, emit, cancel)

    def _prefill(self, tokens: list[int], cancel: threading.Event) -> bool:
        """Evaluate the prompt in slices, checking `cancel` between them, so that a long prompt can be abandoned;
        the KV cache's common prefix is reused. `generate()` then finds the prompt cached and samples at once."""
        keep = self._reuse_cache(tokens, upto=len(tokens) - 1)
        for begin in range(keep, len(tokens), PREFILL_SLICE):
            if cancel.is_set():
                return False
            self.llm.eval(tokens[begin : begin + PREFILL_SLICE])
        return not cancel.is_set()

    def _reuse_cache(self, tokens: list[int], upto: int) -> int:
        """Keep the KV cache's common prefix with `tokens` (at most `upto` tokens), drop the rest; return its length."""
        llm = self.llm
        keep = min(continuation_start(llm.input_ids[: llm.n_tokens].tolist(), tokens), upto)
        memory = llama_cpp.llama_get_memory(llm.ctx)
        if not llama_cpp.llama_memory_seq_rm(memory, -1, keep, -1):  # partial removal unsupported: start over
            llama_cpp.llama_memory_clear(memory, True)
            keep = 0
        llm.n_tokens = keep
        return keep

    def _texts(self, tokens_out: Iterator[int], max_tokens: int, counter: TokenStream) -> Iterator[str]:
        """Decode generated tokens to text pieces; UTF-8 sequences split across tokens are held until whole.
        Each generated token (not the end-of-generation one) is counted into `counter.tokens`."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            for n, token in enumerate(tokens_out, start=1):
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    break
                counter.tokens = n
                text = decoder.decode(self.llm.detokenize([token]))
                if text:
                    yield text
                if n >= max_tokens:
                    break
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            close = getattr(tokens_out, "close", None)
            if close is not None:
                close()

    def _fit(self, tokens: list[int], room: int) -> list[int]:
        """Keep the prompt inside the context window, dropping its oldest tokens if it must."""
        limit = self.n_ctx - max(room, 1)
        if len(tokens) <= limit:
            return tokens
        log.warning("prompt of %d tokens exceeds the %d-token window: keeping its last %d", len(tokens), self.n_ctx, limit)
        return tokens[len(tokens) - limit :]

    # -- scoring ---------------------------------------------------------------------------------------------

    def score(self, context: str, continuation: str) -> float:
        """Sum of log P(continuation tokens | context), with the boundary rule of `xdai.backends.scoring`."""
        if not continuation:
            return 0.0
        full = self.tokenize(context + continuation)
        start = continuation_start(self.tokenize(context), full)
        if start == 0:  # nothing to condition the first token on: use the model's document separator
            full, start = [self._separator(), *full], 1
        if len(full) > self.n_ctx:
            if len(full) - start >= self.n_ctx:
                raise ValueError(
                    f"continuation of {len(full) - start} tokens does not fit the {self.n_ctx}-token window"
                )
            drop = len(full) - self.n_ctx
            full, start = full[drop:], max(start - drop, 1)
        with self._lock:
            return self._logprob_sum(full, start)

    def _logprob_sum(self, tokens: list[int], start: int) -> float:
        """Decode `tokens`, reusing the KV cache's common prefix, and sum log P(tokens[i]) for i >= start."""
        llm, batch = self.llm, self._batch
        assert batch is not None
        keep = self._reuse_cache(tokens, upto=start - 1)
        n_vocab, total, last = llm.n_vocab(), 0.0, len(tokens) - 1
        begin = keep
        while begin < len(tokens):
            # at most MAX_ROWS rows of logits per decode: llama.cpp keeps an output buffer as large as the largest
            end = min(begin + self.n_batch, len(tokens), max(begin, start - 1) + MAX_ROWS)
            chunk = tokens[begin:end]
            batch.n_tokens = len(chunk)
            wanted = []
            for j, token in enumerate(chunk):
                pos = begin + j
                batch.token[j] = token
                batch.pos[j] = pos
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = 0
                # rows for the predictions we sum, and the last row so the context's state stays consistent
                batch.logits[j] = 1 if (start - 1 <= pos) else 0
                if start - 1 <= pos < last:
                    wanted.append(j)
            rc = llama_cpp.llama_decode(llm.ctx, batch)
            if rc != 0:
                llm.n_tokens = 0
                raise RuntimeError(f"llama_decode returned {rc} while scoring")
            for j in wanted:
                row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, j), shape=(n_vocab,))
                total += token_logprob(row, tokens[begin + j + 1])
            llm.input_ids[begin:end] = chunk
            llm.n_tokens = begin = end
        return total
