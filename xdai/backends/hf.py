"""`hf`: any transformers causal LM by local path or hub id (GLM-4, GLM-4.5 MoE, Qwen, ...).

With `tensor_parallel > 1` (or `deepspeed=True`) the model is wrapped by `deepspeed.init_inference`, which shards
it across the GPUs of a `deepspeed --num_gpus N` launch. Like every causal backend it continues `infill.before`
and leaves the post-response to reranking. Loaded models are cached per process, one lock each.
"""

from __future__ import annotations

import asyncio
import dataclasses
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

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        """`special`: a chat-template rendering (`Infill.special`), which carries its own BOS where the template
        wants one, so none is added."""
        return list(self.tokenizer(text, add_special_tokens=not special)["input_ids"])

    @property
    def chat_template(self) -> str | None:
        """The tokenizer's chat template (Jinja2), None for a base model without one."""
        template = getattr(self.tokenizer, "chat_template", None)
        return template if isinstance(template, str) and template.strip() else None

    @property
    def template_tokens(self) -> dict[str, str]:
        return {"bos_token": self.tokenizer.bos_token or "", "eos_token": self.tokenizer.eos_token or ""}

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def _separator(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def fill(self, infill: Infill, settings: GenerationSettings) -> AsyncIterator[str]:
        """Stream the continuation of `infill.before`, trimmed to the bot's turn."""
        return stream_in_thread(lambda emit, cancel: self._generate(infill.before, settings, emit, cancel,
                                                                    infill.special))

    def _generate(self, prompt: str, settings: GenerationSettings, emit: Emit, cancel: threading.Event,
                  special: bool = False) -> None:
        ids = self.tokenize(prompt, special) or [self._separator()]
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

    def fill_candidates(self, infill: Infill, settings: list[GenerationSettings]) -> list[AsyncIterator[str]]:
        """Rerank candidates in one `generate` call (`num_return_sequences`), which shares the prompt's forward
        pass. Each stream yields its candidate's whole turn once the call returns; seeded, the first candidate's
        seed seeds the batch. Candidates that differ in more than their seed are sampled in turn."""
        base = settings[0]
        if len(settings) == 1 or any(dataclasses.replace(s, seed=base.seed) != base for s in settings[1:]):
            return [self.fill(infill, s) for s in settings]
        shared: list[asyncio.Future[list[str]]] = []

        async def candidate(i: int) -> AsyncIterator[str]:
            if not shared:
                shared.append(asyncio.ensure_future(asyncio.to_thread(
                    self._generate_many, infill.before, base, len(settings), infill.special)))
            text = (await asyncio.shield(shared[0]))[i]
            if text:
                yield text

        return [candidate(i) for i in range(len(settings))]

    def _generate_many(self, prompt: str, settings: GenerationSettings, n: int, special: bool) -> list[str]:
        if settings.temperature <= 0:  # greedy candidates are all the same candidate
            pieces: list[str] = []
            self._generate(prompt, settings, pieces.append, threading.Event(), special)
            return ["".join(pieces)] * n
        ids = self.tokenize(prompt, special) or [self._separator()]
        if self.n_ctx and len(ids) + settings.max_tokens > self.n_ctx:
            ids = ids[-max(self.n_ctx - settings.max_tokens, 1) :]
        input_ids = torch.tensor([ids], device=self._input_device)
        eos = self.tokenizer.eos_token_id
        with self._lock:
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            with torch.inference_mode():
                out = self.lm.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=settings.max_tokens,
                    repetition_penalty=settings.repetition_penalty, do_sample=True, temperature=settings.temperature,
                    top_p=settings.top_p, top_k=settings.top_k, num_return_sequences=n,
                    stopping_criteria=StoppingCriteriaList([_RowsEnded(self.tokenizer, settings.stop, len(ids))]),
                    pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos,
                )
        return [_turn_of(self.tokenizer.decode(row[len(ids) :], skip_special_tokens=True), settings.stop)
                for row in out]

    def score(self, context: str, continuation: str, special: bool = False) -> float:
        """Sum of log P(continuation tokens | context), with the boundary rule of `xdai.backends.scoring`."""
        if not continuation:
            return 0.0
        full = self.tokenize(context + continuation, special)
        start = continuation_start(self.tokenize(context, special), full)
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


def _turn_of(text: str, stop: list[str]) -> str:
    turn = TurnFilter(stop)
    return turn.feed(text) + turn.finish()


class _RowsEnded(StoppingCriteria):
    """Per row of a batch: has its candidate's turn ended (a stop string or, once begun, a line break)?"""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str], prompt_len: int):
        self.tokenizer, self.stop, self.prompt_len = tokenizer, stop, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = []
        for row in input_ids:
            turn = TurnFilter(self.stop)
            turn.feed(self.tokenizer.decode(row[self.prompt_len :], skip_special_tokens=True))
            done.append(turn.done)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


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
