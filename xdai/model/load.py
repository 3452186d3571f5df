"""Load and save GLM checkpoints laid out like THUDM's hub repositories (`THUDM/glm-large-chinese`, ...).

A directory holds `config.json`, the weights (`pytorch_model.bin`, `*.safetensors`, or shards named by a
`*.index.json`) and, when present, the sentencepiece tokenizer. Parameter names are THUDM's; the table
`checkpoint_names` below maps each of them to our module's name, and loading is strict by default.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from xdai.model.glm import GLMConfig, GLMModel

# Wrappers around GLMModel in the wild: HF `GLMForConditionalGeneration` stores it as `glm.`, DeepSpeed/Megatron
# training checkpoints as `module.`. The prefix is stripped before names are matched.
WRAPPER_PREFIXES = ("glm.", "module.")

DENSE_LAYER_PARAMETERS = (
    "input_layernorm.weight", "input_layernorm.bias",
    "attention.query_key_value.weight", "attention.query_key_value.bias",
    "attention.dense.weight", "attention.dense.bias",
    "post_attention_layernorm.weight", "post_attention_layernorm.bias",
    "mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias",
    "mlp.dense_4h_to_h.weight", "mlp.dense_4h_to_h.bias",
)
# Our MoE layers (no THUDM equivalent): router, stacked experts, optional shared expert.
MOE_MLP_PARAMETERS = ("mlp.router.weight", "mlp.w1", "mlp.b1", "mlp.w2", "mlp.b2")
SHARED_EXPERT_PARAMETERS = (
    "mlp.shared.dense_h_to_4h.weight", "mlp.shared.dense_h_to_4h.bias",
    "mlp.shared.dense_4h_to_h.weight", "mlp.shared.dense_4h_to_h.bias",
)


class CheckpointError(ValueError):
    """A checkpoint directory does not match its config; the message lists what is missing or unexpected."""


def checkpoint_names(cfg: GLMConfig) -> dict[str, str]:
    """THUDM checkpoint name -> `GLMModel.state_dict()` name, for every parameter the config implies."""
    names = {
        "word_embeddings.weight": "word_embeddings.weight",
        "transformer.position_embeddings.weight": "transformer.position_embeddings.weight",
    }
    if cfg.block_position_encoding:
        names["transformer.block_position_embeddings.weight"] = "transformer.block_position_embeddings.weight"
    moe = set(cfg.moe_layers)
    for i in range(cfg.num_layers):
        layer = f"transformer.layers.{i}."
        params = list(DENSE_LAYER_PARAMETERS[:8])
        if i in moe:
            params += MOE_MLP_PARAMETERS + (SHARED_EXPERT_PARAMETERS if cfg.moe_shared_expert else ())
        else:
            params += DENSE_LAYER_PARAMETERS[8:]
        names.update({layer + p: layer + p for p in params})
    names["transformer.final_layernorm.weight"] = "transformer.final_layernorm.weight"
    names["transformer.final_layernorm.bias"] = "transformer.final_layernorm.bias"
    return names


def _strip_wrapper(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, shards included, in a stable order."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (directory / index).is_file():
            weight_map = json.loads((directory / index).read_text(encoding="utf-8")).get("weight_map", {})
            return [directory / f for f in sorted(set(weight_map.values()))]
    safetensors = sorted(directory.glob("*.safetensors"))
    if safetensors:
        return safetensors
    if (directory / "pytorch_model.bin").is_file():
        return [directory / "pytorch_model.bin"]
    raise CheckpointError(f"{directory}: no weights (pytorch_model.bin, *.safetensors or a *.index.json)")


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, wrapper prefixes stripped (on CPU, memory-mapped when possible)."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(Path(directory)):
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            part = load_file(str(file))
        else:
            try:
                part = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
                part = torch.load(file, map_location="cpu", weights_only=True)
            if isinstance(part, dict) and "module" in part and isinstance(part["module"], dict):
                part = part["module"]  # a Megatron/DeepSpeed mp_rank_00_model_states.pt saved under this name
        for name, tensor in part.items():
            state[_strip_wrapper(name)] = tensor
    return state


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def load_model(directory: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               strict: bool = True) -> GLMModel:
    """Build the GLM of `directory/config.json` and load its weights by name (strict: every expected
    parameter present, nothing unexpected, shapes equal). Attaches `model.tokenizer` when the directory has one."""
    from xdai.model.tokenizer import GLMTokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: no config.json")
    cfg = GLMConfig.from_json(directory / "config.json")
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype or _default_dtype(device)
    with torch.device("meta"):
        model = GLMModel(cfg)
    state = read_state_dict(directory)
    names = checkpoint_names(cfg)
    missing = sorted(n for n in names if n not in state)
    unexpected = sorted(n for n in state if n not in names)
    where = f"{directory}"
    if strict and (missing or unexpected):
        raise CheckpointError(_mismatch_message(where, missing, unexpected))
    if missing:
        raise CheckpointError(_mismatch_message(where, missing, []))
    if unexpected:
        print(f"warning: {where}: ignoring {len(unexpected)} unexpected keys: {', '.join(unexpected[:10])}",
              file=sys.stderr)
    expected = {n: p.shape for n, p in model.state_dict(keep_vars=True).items()}
    loaded: dict[str, torch.Tensor] = {}
    for ckpt_name, ours in names.items():
        tensor = state[ckpt_name]
        if tuple(tensor.shape) != tuple(expected[ours]):
            raise CheckpointError(f"{where}: {ckpt_name} has shape {tuple(tensor.shape)}, config.json implies "
                                  f"{tuple(expected[ours])}")
        loaded[ours] = tensor.to(device=device, dtype=dtype)
    model.load_state_dict(loaded, strict=True, assign=True)
    for module in model.modules():  # plain attributes created on the meta device
        if hasattr(module, "dropped"):
            module.dropped = torch.zeros((), dtype=torch.long, device=device)
    model.tokenizer = GLMTokenizer.from_dir(directory)
    return model.eval()


def _mismatch_message(where: str, missing: list[str], unexpected: list[str]) -> str:
    parts = [f"{where}: checkpoint does not match config.json"]
    if missing:
        parts.append(f"{len(missing)} missing keys: {', '.join(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {', '.join(unexpected)}")
    return "; ".join(parts)


def save_model(model: GLMModel, directory: str | Path, safetensors: bool = False) -> Path:
    """Write `model` in the hub layout (config.json + THUDM names); copies the tokenizer files when known."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    data = {"architectures": ["GLMModel"], "model_type": "glm", **cfg.to_dict()}
    (directory / "config.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    ours = model.state_dict()
    state = {ckpt: ours[name].detach().cpu().contiguous() for ckpt, name in checkpoint_names(cfg).items()}
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(directory / "model.safetensors"))
    else:
        torch.save(state, directory / "pytorch_model.bin")
    if model.tokenizer is not None:
        model.tokenizer.save(directory)
    return directory

