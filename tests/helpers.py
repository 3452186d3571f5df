"""Helpers shared by the tests, imported as `tests.helpers` (the repository root is on pytest's pythonpath).

Plain functions, not fixtures: fixtures stay in each area's conftest.py, which may build them from these.
Today: tiny GLMs and hub-layout checkpoint directories written by hand (tests/xdai/model, tests/inference_kernels).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from xdai.model import GLMConfig, GLMModel

CORPUS = [
    "清华大学位于北京市海淀区，是中国著名的高等学府。",
    "故宫是明清两代的皇宫，位于北京中轴线的中心。",
    "我喜欢在周末去公园散步，看看花草树木。",
    "今天天气很好，我们一起去爬山吧。",
    "The quick brown fox jumps over the lazy dog.",
    "GLM fills blanks in text with spans generated autoregressively.",
    "北京的秋天很美，香山的红叶吸引了很多游客。",
    "你知道长城有多长吗？长城是世界上最长的城墙。",
]


def tiny_config(**overrides) -> GLMConfig:
    base = dict(num_layers=2, vocab_size=160, hidden_size=32, num_attention_heads=4, max_sequence_length=64)
    base.update(overrides)
    return GLMConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> GLMModel:
    torch.manual_seed(seed)
    return GLMModel(tiny_config(**overrides)).eval()


def thudm_state_dict(model: GLMModel, prefix: str = "") -> dict[str, torch.Tensor]:
    """The model's tensors under THUDM's names, spelled out by hand (independent of xdai.model.load)."""
    cfg = model.config
    sd = model.state_dict()
    names = ["word_embeddings.weight", "transformer.position_embeddings.weight",
             "transformer.block_position_embeddings.weight"]
    for i in range(cfg.num_layers):
        for sub in ("input_layernorm", "attention.query_key_value", "attention.dense", "post_attention_layernorm",
                    "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"):
            names += [f"transformer.layers.{i}.{sub}.weight", f"transformer.layers.{i}.{sub}.bias"]
    names += ["transformer.final_layernorm.weight", "transformer.final_layernorm.bias"]
    return {prefix + n: sd[n].clone() for n in names}


def write_hub_checkpoint(directory: Path, model: GLMModel, sp_model: Path | None = None, prefix: str = "glm.",
                         safetensors: bool = False) -> Path:
    """config.json (with the extra keys the hub's has), weights, tokenizer files: as on THUDM's repositories."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    config = {
        "architectures": ["GLMModel"], "model_type": "glm", "attention_dropout_prob": 0.1,
        "attention_scale": 1.0, "block_position_encoding": True, "checkpoint_activations": False,
        "embedding_dropout_prob": 0.1, "hidden_size": cfg.hidden_size, "initializer_range": 0.02,
        "max_sequence_length": cfg.max_sequence_length, "num_attention_heads": cfg.num_attention_heads,
        "num_layers": cfg.num_layers, "output_dropout_prob": 0.1, "output_predict": True,
        "parallel_output": True, "pool_token": "cls", "relative_encoding": False, "spell_func": "lstm",
        "spell_length": None, "torch_dtype": "float32", "vocab_size": cfg.vocab_size,
    }
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    state = thudm_state_dict(model, prefix)
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(directory / "model.safetensors"))
    else:
        torch.save(state, directory / "pytorch_model.bin")
    if sp_model is not None:
        import sentencepiece as spm

        n = spm.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
        (directory / "cog-pretrain.model").write_bytes(sp_model.read_bytes())
        tokens = ["<|endoftext|>", "[SEP]", "[CLS]", "[MASK]", "[UNK]", "<|startofpiece|>", "<|endofpiece|>",
                  "[sMASK]", "[gMASK]"]
        (directory / "added_tokens.json").write_text(json.dumps({t: n + i for i, t in enumerate(tokens)}))
        (directory / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "GLMChineseTokenizer", "auto_map": {}, "eos_token": "<|endoftext|>"}))
    return directory


def decisions_agree(a, b, labels: list, stores) -> float:
    """Share of the labelled questions on which two answerability models make the same answer/decline decision."""
    from xdai.answerability import gather

    same = 0
    for row in labels:
        evidence = gather(row["q"], stores)
        same += (a.probability(evidence) >= a.threshold) == (b.probability(evidence) >= b.threshold)
    return same / len(labels)
