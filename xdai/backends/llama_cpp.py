"""`llama_cpp`: GGUF models on CPU through llama-cpp-python — the offline default backend.

A causal model has no [MASK]: `infill.before` (the prompt ending with the bot's speaker tag) is continued and the
continuation is trimmed to the bot's turn. The grounded post-response `infill.after` is honoured by reranking
(`xdai.rerank`), which calls `score`. Generation and scoring run on the process-wide engine of the model file
(`xdai.backends.engine`), shared by every backend instance that names it: turns of different sessions decode
together in one batch, a reply's candidates (`fill_candidates`) share their prompt's evaluation, and a prompt
reuses the cells of the prefix it shares with earlier ones (a bot's persona, a session's previous turn).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

# llama.cpp's CPU backend is OpenMP. Busy-waiting threads turn a shared machine's decode from ~10 tok/s into
# ~0.5 tok/s (measured here under load with 2 threads); passive waiting must be set before libgomp loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llama_cpp  # noqa: E402

from xdai.backends.base import GenerationSettings, Infill  # noqa: E402
from xdai.backends.engine import Engine, EngineConfig, SamplingParams, Stream, get_engine  # noqa: E402
from xdai.backends.engine.prefix_cache import PrefixStats  # noqa: E402
from xdai.backends.engine.runner import all_cores, quiet_llama_logs  # noqa: E402
from xdai.backends.models import resolve_model  # noqa: E402
from xdai.backends.scoring import continuation_start  # noqa: E402
from xdai.backends.stream import TokenStream, TurnFilter  # noqa: E402

log = logging.getLogger(__name__)

_VOCABS: dict[str, llama_cpp.Llama] = {}
_LOAD_LOCK = threading.Lock()
MIN_ENGINE_CTX = 4096  # backends asking for a smaller window share the engine of this one


def load_vocab(path: str | Path) -> llama_cpp.Llama:
    """The model's vocabulary and metadata only (no weights): tokenization, special tokens, chat template."""
    key = str(Path(path).resolve())
    with _LOAD_LOCK:
        if key not in _VOCABS:
            quiet_llama_logs()  # a vocabulary-only context warns that it was trained on 0 positions
            _VOCABS[key] = llama_cpp.Llama(model_path=key, vocab_only=True, verbose=False)
        return _VOCABS[key]


def engine_for(path: str | Path, n_ctx: int, threads: int) -> Engine:
    """The process-wide engine for this model file: one per file, thread count and window bucket."""
    window = max(n_ctx, MIN_ENGINE_CTX)
    return get_engine(path, EngineConfig(n_ctx=window, kv_cells=max(16384, 2 * window), threads=threads))


def sampling_params(settings: GenerationSettings, seed: int | None, *, logprobs: bool = False) -> SamplingParams:
    """The engine's sampler chain is llama-cpp-python's (`Llama.generate`): same settings, same tokens."""
    return SamplingParams(temperature=max(settings.temperature, 0.0), top_p=settings.top_p, top_k=settings.top_k,
                          repetition_penalty=settings.repetition_penalty, max_tokens=settings.max_tokens, seed=seed,
                          logprobs=logprobs)


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
        self.n_batch = n_batch  # kept for configuration compatibility: the engine sizes its own batches
        self.engine = engine_for(self.model_path, self.n_ctx, self.threads)
        self.llm = load_vocab(self.model_path)
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)

    # -- text <-> tokens -------------------------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        """Prompt text is data: special-token spellings inside it (e.g. "<|im_end|>") stay plain text, unless
        `special` (a prompt rendered through the model's chat template, `Infill.special`: its markers are tokens)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)

    @property
    def chat_template(self) -> str | None:
        """The GGUF's `tokenizer.chat_template` (Jinja2), None when the model has none (a base model)."""
        return self.llm.metadata.get("tokenizer.chat_template") or None

    @property
    def template_tokens(self) -> dict[str, str]:
        """The spellings a chat template may use for BOS and EOS."""
        def text(token: int) -> str:
            if token < 0:
                return ""
            return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

        return {"bos_token": text(self.llm.token_bos()), "eos_token": text(self.llm.token_eos())}

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def _separator(self) -> int:
        """What an empty text is conditioned on: BOS, or EOS for models without one (Qwen)."""
        return self.llm.token_bos() if self.llm.token_bos() >= 0 else self.llm.token_eos()

    # -- generation ------------------------------------------------------------------------------------------

    def fill(self, infill: Infill, settings: GenerationSettings) -> TokenStream:
        """Stream the continuation of `infill.before`, trimmed to the bot's turn; `.tokens` counts what the model
        generated for it. The request reaches the engine when the stream is first read."""
        return self.fill_candidates(infill, [settings])[0]

    def fill_candidates(self, infill: Infill, settings: list[GenerationSettings]) -> list[TokenStream]:
        """One stream per settings, decoded together: the prompt is evaluated once and its cells shared, each
        candidate samples with its own settings and seed. Reading any of them starts all of them. Each stream's
        `.logprob` is the model's log-probability of the tokens of its turn (reranking reads it instead of scoring
        the text again)."""
        started: list[Stream] = []
        lock = threading.Lock()

        def start(i: int) -> Stream:
            with lock:
                if not started:
                    room = max(s.max_tokens for s in settings)
                    tokens = self._fit(self.tokenize(infill.before, infill.special) or [self._separator()], room)
                    started.extend(self.engine.generate(
                        tokens, [sampling_params(s, s.seed, logprobs=True) for s in settings]))
                return started[i]

        streams = []
        for i, s in enumerate(settings):
            counter = TokenStream()
            streams.append(counter.of(self._turn(lambda i=i: start(i), s.stop, counter)))
        return streams

    @staticmethod
    async def _turn(start: Callable[[], Stream], stop: list[str], counter: TokenStream) -> AsyncIterator[str]:
        """The bot's turn of one engine stream (`TurnFilter`); each generated token is counted into
        `counter.tokens`, and the log-probabilities of the tokens that carry the turn (from its first visible
        character to the token that ends it, which is not counted) into `counter.logprob`. When the turn ends the
        sequence ends and its cells stay cached for the next prompt; a reader that stops early cancels it, which
        frees them at once."""
        stream = start()
        turn = TurnFilter(stop)
        begun = False
        try:
            async for event in stream:
                if event.token >= 0:
                    counter.tokens += 1
                shown = turn.feed(event.text)
                begun = begun or bool(event.text.strip())
                if begun and not turn.done and event.logprob is not None:
                    counter.logprob = (counter.logprob or 0.0) + event.logprob
                if shown:
                    yield shown
                if turn.done:
                    stream.end()
                    return
            tail = turn.finish()
            if tail:
                yield tail
        finally:
            stream.cancel()

    def prefix_stats(self) -> PrefixStats:
        """How much of the prompts the engine did not evaluate again (`hit_rate`), since it started."""
        return self.engine.prefix_stats()

    def _fit(self, tokens: list[int], room: int) -> list[int]:
        """Keep the prompt inside the context window, dropping its oldest tokens if it must."""
        limit = self.n_ctx - max(room, 1)
        if len(tokens) <= limit:
            return tokens
        log.warning("prompt of %d tokens exceeds the %d-token window: keeping its last %d", len(tokens), self.n_ctx, limit)
        return tokens[len(tokens) - limit :]

    # -- scoring ---------------------------------------------------------------------------------------------

    def score(self, context: str, continuation: str, special: bool = False) -> float:
        """Sum of log P(continuation tokens | context), with the boundary rule of `xdai.backends.scoring`."""
        if not continuation:
            return 0.0
        full = self.tokenize(context + continuation, special)
        start = continuation_start(self.tokenize(context, special), full)
        if start == 0:  # nothing to condition the first token on: use the model's document separator
            full, start = [self._separator(), *full], 1
        if len(full) > self.n_ctx:
            if len(full) - start >= self.n_ctx:
                raise ValueError(
                    f"continuation of {len(full) - start} tokens does not fit the {self.n_ctx}-token window"
                )
            drop = len(full) - self.n_ctx
            full, start = full[drop:], max(start - drop, 1)
        return self.engine.score(full, start).result().logprob
