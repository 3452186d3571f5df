"""Our GLM engine: blank infilling with 2D positions, an optional mixture-of-experts FFN, THUDM checkpoints.

`load_model(DIR)` reads a directory laid out like THUDM's hub repositories; `fill_text` / `stream_spans`
fill its [MASK]s; `parallel.init_inference` runs it under DeepSpeed-Inference.
"""

from xdai.model.generate import (
    Filled,
    SpecialIds,
    fill_ids,
    fill_text,
    span_logprob,
    stream_fill,
    stream_spans,
)
from xdai.model.glm import ConfigError, GLMConfig, GLMModel, GLMOutput, KVCache, prefix_lm_mask
from xdai.model.load import CheckpointError, checkpoint_names, load_model, save_model
from xdai.model.tokenizer import GLMTokenizer
from xdai.model.upcycle import upcycle

__all__ = [
    "CheckpointError", "ConfigError", "Filled", "GLMConfig", "GLMModel", "GLMOutput", "GLMTokenizer", "KVCache",
    "SpecialIds", "checkpoint_names", "fill_ids", "fill_text", "load_model", "prefix_lm_mask", "save_model",
    "span_logprob", "stream_fill", "stream_spans", "upcycle",
]
