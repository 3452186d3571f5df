"""The model runner: owns the llama.cpp model and context, turns a `SchedulerOutput` into one `llama_decode`.

The context has `n_seq_max` sequences over one unified KV cache, so the sequences of a step go into one batch
(each token tagged with its sequence id) and share cells they have in common.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

# llama.cpp's CPU backend is OpenMP; passive waiting must be set before libgomp loads (see xdai.backends.llama_cpp).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402

from xdai.backends.engine.config import EngineConfig  # noqa: E402
from xdai.backends.engine.scheduler import SchedulerOutput  # noqa: E402
from xdai.backends.engine.tokenizer import Tokenizer  # noqa: E402

_llama_log = logging.getLogger("llama_cpp")
_last_level = [0]


@llama_cpp.llama_log_callback
def _log_errors_only(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp's log lines at ERROR only, into Python logging. (llama-cpp-python maps ggml's levels one off,
    DEBUG=1 INFO=2 WARN=3 ERROR=4, so its own quiet mode still prints warnings such as the n_ctx_train one.)"""
    if level != 5:  # 5: continues the previous line
        _last_level[0] = level
    if _last_level[0] >= 4:
        _llama_log.error("%s", text.decode("utf-8", errors="replace").rstrip())


def quiet_llama_logs() -> None:
    """Route llama.cpp's log through `_log_errors_only` for the whole process (its callback is global)."""
    llama_cpp.llama_log_set(_log_errors_only, ctypes.c_void_p(0))


def all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ModelRunner:
    """One loaded model, one context, one reusable batch. Engine thread only (tokenizer: any thread)."""

    def __init__(self, model_path: str | Path, config: EngineConfig) -> None:
        if not config.verbose:
            quiet_llama_logs()
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        threads = config.threads or all_cores()
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.model)
        # one unified cache: a sequence may span all of it, so llama.cpp wants it within the trained window
        self.kv_cells = max(min(config.kv_cells, self.n_ctx_train or config.kv_cells), config.n_ctx)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = self.kv_cells
        cp.n_batch = cp.n_ubatch = config.idle_step_tokens
        cp.n_seq_max = config.max_seqs
        cp.n_outputs_max = config.max_logits_rows
        cp.kv_unified = True
        cp.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if config.flash_attn
                              else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise RuntimeError(f"llama.cpp could not create a context for {model_path} ({config})")
        self.threads = threads
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.tokenizer = Tokenizer(self.model)
        self.n_vocab = self.tokenizer.n_vocab
        self._batch = llama_cpp.llama_batch_init(config.idle_step_tokens, 0, 1)

    def execute(self, plan: SchedulerOutput) -> dict[int, list[int]]:
        """Decode the plan's chunks in one batch; return, per chunk, the batch indices of its logits rows
        (in position order) for `logits` and `Sampler.sample`."""
        batch = self._batch
        j = 0
        rows: dict[int, list[int]] = {}
        for k, chunk in enumerate(plan.chunks):
            seq = chunk.seq
            want = chunk.rows
            mine: list[int] = []
            for pos in range(chunk.begin, chunk.end):
                batch.token[j] = seq.tokens[pos]
                batch.pos[j] = pos
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq.seq_id
                out = pos in want
                batch.logits[j] = out
                if out:
                    mine.append(j)
                j += 1
            rows[k] = mine
        batch.n_tokens = j
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} for a batch of {j} tokens")
        return rows

    def logits(self, index: int) -> np.ndarray:
        """The logits row of batch index `index` of the last decode (a view: read it before the next decode)."""
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))

    def seq_pos_max(self, seq_id: int) -> int:
        return int(llama_cpp.llama_memory_seq_pos_max(self.memory, seq_id))

    def close(self) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            llama_cpp.llama_batch_free(batch)
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None
