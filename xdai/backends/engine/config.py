"""How an engine is sized: one plain dataclass, read once by whoever builds the engine and handed down."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    """The llama.cpp context and the scheduler's limits.

    The KV cache is unified: one pool of `kv_cells` cells shared by every sequence, so sequences that share a
    prompt prefix share its cells (llama.cpp's `seq_cp` adds a sequence to a cell instead of copying it).
    """

    n_ctx: int = 4096  # the longest sequence (prompt + reply) one request may hold
    kv_cells: int = 16384  # KV cells of the unified cache: all running sequences and cached prefixes together
    max_seqs: int = 32  # llama.cpp sequence ids (n_seq_max): running sequences plus cached prefixes
    max_running: int = 8  # sequences decoded together in one batch
    threads: int = 0  # 0: every core this process may use
    step_tokens: int = 64  # tokens per step while sequences are streaming: a newcomer's prefill slice
    idle_step_tokens: int = 256  # tokens per step when nobody is streaming (also llama.cpp's n_batch)
    max_logits_rows: int = 64  # logits rows per step (each row is n_vocab floats: 0.6 MB for Qwen)
    prefix_cache: bool = True  # keep finished sequences' cells as prefixes that later prompts can reuse
    min_prefix: int = 8  # shortest shared prefix worth copying (a BOS alone is no hit)
    # Flash attention: without it, a unified cache's attention at 2+ rows costs 2-3x per step on CPU (measured:
    # B=2 104 ms vs 62 ms a step, Qwen 0.5B, 2 cores); its f16 accumulation moves logprobs by ~0.1 from the
    # non-FA path, so references built to compare with the engine set it too.
    flash_attn: bool = True
    verbose: bool = False  # llama.cpp's own log lines

    def __post_init__(self) -> None:
        if self.max_running < 1 or self.max_seqs < self.max_running:
            raise ValueError(f"need 1 <= max_running ({self.max_running}) <= max_seqs ({self.max_seqs})")
        if self.kv_cells < self.n_ctx:
            raise ValueError(f"kv_cells ({self.kv_cells}) must hold at least one full sequence (n_ctx {self.n_ctx})")
        if not 0 < self.step_tokens <= self.idle_step_tokens:
            raise ValueError("need 0 < step_tokens <= idle_step_tokens")
        if self.max_logits_rows < self.max_running:
            raise ValueError("max_logits_rows must cover one row per running sequence")
