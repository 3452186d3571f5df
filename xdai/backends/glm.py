"""The `glm` backend: our GLM engine fills `<context> [MASK] <post-response>` natively (blank infilling).

No prompt trick is needed for the XDAI format: part A is the context with the mask where the reply goes and,
when a condition is active, the grounded post-response after it; the reply is generated as part B.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import AsyncIterator
from typing import Any

import torch

from xdai.backends.stream import Emit, pump, stream_in_thread
from xdai.generation import GenerationSettings, Infill
from xdai.model import SpecialIds, load_model, span_logprob, stream_spans


class GLMBackend:
    name = "glm"

    def __init__(self, model_dir: str, device: str | None = None, *, dtype: str | None = None,
                 kernels: bool = True, use_cache: bool = True, **_: Any) -> None:
        """`model_dir`: a directory in THUDM's hub layout (config.json, weights, sentencepiece tokenizer).
        `kernels`: on CUDA, route layers through `inference_kernels` (XDAI_KERNELS=off also disables them)."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = getattr(torch, dtype) if dtype else None
        self.model = load_model(model_dir, device=device, dtype=torch_dtype)
        if self.model.tokenizer is None:
            raise ValueError(f"{model_dir}: no sentencepiece tokenizer (e.g. cog-pretrain.model) next to the weights")
        if kernels and device.startswith("cuda"):
            import inference_kernels

            inference_kernels.inject(self.model)
        self.tokenizer = self.model.tokenizer
        self.use_cache = use_cache
        self._lock = threading.Lock()

    @staticmethod
    def prompt(infill: Infill) -> str:
        """`before [MASK] after`: the text whose mask GLM fills."""
        return f"{infill.before}[MASK]{infill.after or ''}"

    def fill(self, infill: Infill, settings: GenerationSettings) -> AsyncIterator[str]:
        """Stream the span that fills the mask, trimmed to the bot's turn."""
        return stream_in_thread(lambda emit, cancel: self._generate(self.prompt(infill), settings, emit, cancel))

    def _generate(self, text: str, settings: GenerationSettings, emit: Emit, cancel: threading.Event) -> None:
        with self._lock:
            if cancel.is_set():
                return
            limit = self.model.config.max_sequence_length
            if settings.max_tokens >= limit:
                settings = dataclasses.replace(settings, max_tokens=limit - 1)
            prompt = self.tokenizer.encode_prompt(text)
            if len(prompt) >= limit:  # keep [CLS] and the most recent context (GLM truncates on the left)
                prompt = prompt[:1] + prompt[len(prompt) - limit + 2:]
            pieces = (piece for _, piece in stream_spans(self.model, prompt, settings, use_cache=self.use_cache))
            pump(pieces, settings.stop, emit, cancel)

    def score(self, context: str, continuation: str) -> float:
        """Sum of log P(continuation | context) with the continuation generated as the fill of a mask placed
        after the context."""
        if not continuation:
            return 0.0
        prompt = self.tokenizer.encode_prompt(f"{context}[MASK]")
        span = self.tokenizer.encode(continuation)
        with self._lock:
            return span_logprob(self.model, prompt, span, SpecialIds.from_tokenizer(self.tokenizer))
