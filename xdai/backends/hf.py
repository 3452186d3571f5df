"""`hf`: any transformers causal LM by local path or hub id (GLM-4, GLM-4.5 MoE, Qwen, ...).

With `tensor_parallel > 1` (or `deepspeed=True`) the model is wrapped by `deepspeed.init_inference`, which shards
it across the GPUs of a `deepspeed --num_gpus N` launch. Like every causal backend it continues `infill.before`
and leaves the post-response to reranking. Loaded models are cached per process, one lock each.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from xdai.backends.scoring import continuation_start
from xdai.backends.stream import Emit, TurnFilter, stream_in_thread
from xdai.generation import GenerationSettings, Infill

_LOADED: dict[tuple[Any, ...], tuple[Any, PreTrainedTokenizerBase, threading.Lock]] = {}
_LOAD_LOCK = threading.Lock()

_DTYPES = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_hf(
    model: str, device: str, dtype: str, tensor_parallel: int, use_deepspeed: bool, trust_remote_code: bool
) -> tuple[Any, PreTrainedTokenizerBase, threading.Lock]:
    """The process-wide loaded (model, tokenizer, lock) for these settings."""
    key = (model, device, dtype, tensor_parallel, use_deepspeed, trust_remote_code)
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        if dtype not in _DTYPES:
            raise ValueError(f"hf backend: dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
        # Prompt text is data: special-token spellings inside it stay plain text.
        tokenizer = AutoTokenizer.from_pretrained(
            model, trust_remote_code=trust_remote_code, split_special_tokens=True
        )
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code)
        lm.eval()
        if use_deepspeed or tensor_parallel > 1:
            import deepspeed

            ds_dtype = lm.dtype if dtype == "auto" else _DTYPES[dtype]
            lm = deepspeed.init_inference(
                lm, tensor_parallel={"tp_size": tensor_parallel}, dtype=ds_dtype, replace_with_kernel_inject=False
            )
        else:
            lm.to(device)
        if device.startswith("cuda"):
            # Fused Triton MoE blocks (Mixtral, Qwen2Moe, Glm4Moe) on the GPU; XDAI_KERNELS=off opts out.
            import inference_kernels

            inference_kernels.inject(lm)
        _LOADED[key] = (lm, tokenizer, threading.Lock())
        return _LOADED[key]


class HFBackend:
    """Continue a prompt with a transformers causal LM; score continuations with one forward pass."""

    name = "hf"

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str = "auto",
        tensor_parallel: int = 1,
        deepspeed: bool = False,
        trust_remote_code: bool = False,
    ):
        if not model or model == "default":
            raise ValueError("the hf backend needs a model: a local directory or a hub id (e.g. THUDM/glm-4-9b-chat-hf)")
        self.model = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.lm, self.tokenizer, self._lock = load_hf(
            model, self.device, dtype, tensor_parallel, deepspeed, trust_remote_code
        )
        module = getattr(self.lm, "module", self.lm)  # a DeepSpeed engine wraps the model
        self._config = module.config
        self._input_device = next(module.parameters()).device
        self.n_ctx = int(getattr(self._config, "max_position_embeddings", 0) or 0) or None

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def _separator(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def fill(self, infill: Infill, settings: GenerationSettings) -> AsyncIterator[str]:
        """Stream the continuation of `infill.before`, trimmed to the bot's turn."""
        return stream_in_thread(lambda emit, cancel: self._generate(infill.before, settings, emit, cancel))

    def _generate(self, prompt: str, settings: GenerationSettings, emit: Emit, cancel: threading.Event) -> None:
        ids = self.tokenize(prompt) or [self._separator()]
        if self.n_ctx and len(ids) + settings.max_tokens > self.n_ctx:  # keep the most recent tokens
            ids = ids[-max(self.n_ctx - settings.max_tokens, 1) :]
        input_ids = torch.tensor([ids], device=self._input_device)
        turn = TurnFilter(settings.stop)
        sampling: dict[str, Any] = {"do_sample": settings.temperature > 0}
        if settings.temperature > 0:
            sampling.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
        eos = self.tokenizer.eos_token_id
        with self._lock:
            if cancel.is_set():
                return
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            with torch.inference_mode():
                self.lm.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=settings.max_tokens,
                    repetition_penalty=settings.repetition_penalty,
                    streamer=_TurnStreamer(self.tokenizer, turn, emit, cancel),
                    stopping_criteria=StoppingCriteriaList([_StopWhen(lambda: cancel.is_set() or turn.done)]),
                    pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos,
                    **sampling,
                )

    def score(self, context: str, continuation: str) -> float:
        """Sum of log P(continuation tokens | context), with the boundary rule of `xdai.backends.scoring`."""
        if not continuation:
            return 0.0
        full = self.tokenize(context + continuation)
        start = continuation_start(self.tokenize(context), full)
        if start == 0:  # nothing to condition the first token on: use the model's document separator
            full, start = [self._separator(), *full], 1
        input_ids = torch.tensor([full], device=self._input_device)
        with self._lock, torch.inference_mode():
            logits = self.lm(input_ids=input_ids).logits[0, start - 1 : -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        targets = input_ids[0, start:].to(logprobs.device)
        return float(logprobs.gather(-1, targets[:, None]).sum())


class _StopWhen(StoppingCriteria):
    def __init__(self, flag):
        self.flag = flag

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.flag(), dtype=torch.bool, device=input_ids.device)


class _TurnStreamer(BaseStreamer):
    """Decodes generated tokens as they come and passes whole characters through the turn filter."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, turn: TurnFilter, emit: Emit, cancel: threading.Event):
        self.tokenizer, self.turn, self.emit, self.cancel = tokenizer, turn, emit, cancel
        self.ids: list[int] = []
        self.shown = 0
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        if self.turn.done or self.cancel.is_set():
            return
        self.ids.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            return
        piece, self.shown = text[self.shown :], len(text)
        shown = self.turn.feed(piece)
        if shown:
            self.emit(shown)

    def end(self) -> None:
        if self.cancel.is_set():
            return
        if self.ids:
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            shown = self.turn.feed(text[self.shown :])
            if shown:
                self.emit(shown)
        tail = self.turn.finish()
        if tail:
            self.emit(tail)
