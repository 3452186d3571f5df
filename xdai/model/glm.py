"""GLM (Du et al., ACL 2022): one file for the model, parameter names as in THUDM's checkpoints.

Word + position + block-position embeddings are summed (2D positional encoding); pre-LayerNorm blocks with a
tanh-GeLU MLP (or an MoE layer, see `moe.py`); logits tied to the word embeddings. Attention is bidirectional
over part A (`j < sep`) and causal over part B (`j <= i`), which sees all of part A.

`fused = True` on a block (set by `inference_kernels.inject`) routes LayerNorm, bias-GeLU, prefix attention and
the MoE through `inference_kernels` on CUDA; `XDAI_KERNELS=off` keeps the plain path.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xdai.model.moe import MoEMLP


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation GLM uses: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return F.gelu(x, approximate="tanh")


class ConfigError(ValueError):
    """A GLM config.json is wrong; the message names the file and the key."""


@dataclass
class GLMConfig:
    """The keys of THUDM's config.json that shape the network, plus our MoE switch.

    Unknown keys of a hub config (dropout probabilities, `auto_map`, ...) are kept in `extra`, untouched.
    """

    num_layers: int = 24
    vocab_size: int = 50048
    hidden_size: int = 1024
    num_attention_heads: int = 16
    max_sequence_length: int = 1024
    block_position_encoding: bool = True
    layernorm_epsilon: float = 1e-5
    inner_hidden_size: int | None = None  # None: 4 * hidden_size
    # Mixture of experts: the MLPs of `moe_layers` become MoE layers (see moe.py).
    moe_layers: list[int] = field(default_factory=list)
    num_experts: int = 0
    moe_top_k: int = 2  # 1: Switch-style, 2: GShard-style
    moe_capacity_factor: float | None = None  # None: no capacity limit, no dropped tokens
    moe_renormalize: bool = True  # divide the top-k gate weights by their sum
    moe_shared_expert: bool = False  # a dense expert every token goes through, added to the routed output
    moe_aux_loss_coef: float = 0.01
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ffn_size(self) -> int:
        return self.inner_hidden_size or 4 * self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "GLMConfig") -> None:
        for key in ("num_layers", "vocab_size", "hidden_size", "num_attention_heads", "max_sequence_length"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"{where}: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        bad = [i for i in self.moe_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ConfigError(f"{where}: moe_layers {bad} outside 0..{self.num_layers - 1}")
        if self.moe_layers:
            if self.num_experts < 1:
                raise ConfigError(f"{where}: num_experts must be >= 1 when moe_layers is set")
            if not 1 <= self.moe_top_k <= self.num_experts:
                raise ConfigError(f"{where}: moe_top_k must be in 1..num_experts ({self.num_experts})")
            if self.moe_capacity_factor is not None and self.moe_capacity_factor <= 0:
                raise ConfigError(f"{where}: moe_capacity_factor must be > 0 or null")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> GLMConfig:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        if "moe_layers" in kwargs:
            kwargs["moe_layers"] = [int(i) for i in kwargs["moe_layers"]]
        try:
            cfg = cls(**kwargs, extra=extra)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("GLMConfig", where, 1)) from None
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return cfg

    @classmethod
    def from_json(cls, path: str | Path) -> GLMConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(data, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        return {**self.extra, **data}


@dataclass
class GLMOutput:
    logits: torch.Tensor
    moe_aux_loss: torch.Tensor | None = None  # sum over MoE layers of the load-balancing loss (unscaled)
    moe_dropped: torch.Tensor | int = 0  # token-expert assignments dropped by the capacity limit, all MoE layers


class KVCache:
    """Per-layer key/value buffers `[B, H, T, D]`, with each row's own fill length.

    Rows fill independently (row b writes its next token at `lengths[b]`), so a batch of prompts of different
    lengths decodes without left padding: padding written by the prefill lies past `lengths[b]` and is
    overwritten before any query can see it.
    """

    def __init__(self, num_layers: int, batch: int, heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        shape = (batch, heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.sep = torch.zeros(batch, dtype=torch.long, device=device)
        self.max_len = max_len

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values at each row's offset; return the buffers up to the longest fill."""
        b, h, lq, d = k.shape
        end = int(self.lengths.max()) + lq
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        index = (self.lengths[:, None] + torch.arange(lq, device=k.device))[:, None, :, None].expand(b, h, lq, d)
        self.keys[layer].scatter_(2, index, k)
        self.values[layer].scatter_(2, index, v)
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


@dataclass
class AttentionSpec:
    """Who sees whom: `sep` form (prefix-LM, optionally against a cache) or a dense `[B, 1, Lq, Lk]` mask."""

    sep: torch.Tensor | None = None  # [B] length of part A
    q_offset: torch.Tensor | None = None  # [B] absolute position of the first query
    kv_len: torch.Tensor | None = None  # [B] valid keys
    dense: torch.Tensor | None = None  # [B, 1, Lq, Lk] bool, True = visible

    def mask(self, lq: int, lk: int, device: torch.device) -> torch.Tensor:
        if self.dense is not None:
            return self.dense
        assert self.sep is not None
        j = torch.arange(lk, device=device)[None, None, :]
        offset = self.q_offset if self.q_offset is not None else torch.zeros_like(self.sep)
        i = offset[:, None, None] + torch.arange(lq, device=device)[None, :, None]
        visible = (j < self.sep[:, None, None]) | (j <= i)
        if self.kv_len is not None:
            visible = visible & (j < self.kv_len[:, None, None])
        return visible[:, None]


def prefix_lm_mask(sep: torch.Tensor, length: int) -> torch.Tensor:
    """The dense `[B, 1, L, L]` mask equivalent to separator indices `sep` (1 = visible), as THUDM builds it."""
    return AttentionSpec(sep=sep.long()).mask(length, length, sep.device).float()


def _kernels_on(x: torch.Tensor) -> bool:
    from inference_kernels.dispatch import kernels_enabled

    return x.is_cuda and kernels_enabled()


class SelfAttention(nn.Module):
    def __init__(self, cfg: GLMConfig) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim
        self.query_key_value = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, spec: AttentionSpec, cache: KVCache | None, layer: int,
                fused: bool) -> torch.Tensor:
        b, lq, _ = x.shape
        qkv = self.query_key_value(x)
        heads = qkv.shape[-1] // (3 * self.head_dim)  # local heads when tensor-parallel shards this Linear
        q, k, v = qkv.view(b, lq, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            k, v = cache.write(layer, k, v)
        if fused and spec.dense is None:
            import inference_kernels

            out = inference_kernels.prefix_attention(q, k, v, spec.sep, q_offset=spec.q_offset
                                                     if spec.q_offset is not None else 0, kv_len=spec.kv_len)
        else:
            mask = spec.mask(lq, k.shape[2], x.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(torch.bool))
        return self.dense(out.transpose(1, 2).reshape(b, lq, heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(hidden, ffn)
        self.dense_4h_to_h = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        if fused and self.dense_h_to_4h.bias is not None:
            import inference_kernels

            h = inference_kernels.bias_gelu(F.linear(x, self.dense_h_to_4h.weight), self.dense_h_to_4h.bias)
        else:
            h = gelu(self.dense_h_to_4h(x))
        return self.dense_4h_to_h(h)


class InfillingDecoderLayer(nn.Module):
    """Pre-LN transformer layer (`GLMBlock`).

    The class names matter to DeepSpeed AutoTP, which picks layouts by matching class names in the model's repr:
    "...DecoderLayer" makes it split `query_key_value` as three stacked q/k/v blocks (as THUDM stores them),
    while any "GLM" in the repr would make it treat `dense_h_to_4h` as ChatGLM's packed gate/up projection."""

    fused: bool = False

    def __init__(self, cfg: GLMConfig, moe: bool = False) -> None:
        super().__init__()
        self.eps = cfg.layernorm_epsilon
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.attention = SelfAttention(cfg)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        if moe:
            shared = MLP(cfg.hidden_size, cfg.ffn_size) if cfg.moe_shared_expert else None
            self.mlp: nn.Module = MoEMLP(cfg, shared=shared)
        else:
            self.mlp = MLP(cfg.hidden_size, cfg.ffn_size)

    def forward(self, x: torch.Tensor, spec: AttentionSpec, cache: KVCache | None, layer: int) -> torch.Tensor:
        fused = self.fused and _kernels_on(x)
        if fused:
            import inference_kernels

            ln1 = self.input_layernorm
            h, _ = inference_kernels.layer_norm(x, ln1.weight, ln1.bias, self.eps)
            a = self.attention(h, spec, cache, layer, fused)
            ln2 = self.post_attention_layernorm
            h, x = inference_kernels.layer_norm(a, ln2.weight, ln2.bias, self.eps, residual=x)
            return x + self.mlp(h, fused=True)
        x = x + self.attention(self.input_layernorm(x), spec, cache, layer, False)
        return x + self.mlp(self.post_attention_layernorm(x), fused=False)


class InfillingTransformer(nn.Module):
    def __init__(self, cfg: GLMConfig) -> None:
        super().__init__()
        positions = cfg.max_sequence_length + (1 if cfg.block_position_encoding else 0)
        self.position_embeddings = nn.Embedding(positions, cfg.hidden_size)
        if cfg.block_position_encoding:
            self.block_position_embeddings = nn.Embedding(positions, cfg.hidden_size)
        moe = set(cfg.moe_layers)
        self.layers = nn.ModuleList(InfillingDecoderLayer(cfg, moe=i in moe) for i in range(cfg.num_layers))
        self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)


class GLMModel(nn.Module):
    """`model(input_ids, position_ids, attention_mask).logits`, as THUDM's GLM on the HF hub.

    position_ids: `[B, 2, L]` (positions, block positions), or `[B, L]` without block position encoding.
    attention_mask: `[B]` separator indices (length of part A), a scalar, or a full `[B, 1, L, L]` mask.
    cache: a `KVCache` (see `new_cache`); queries then continue each row at `cache.lengths`, and
    attention_mask (separators) may be omitted after the first call.
    """

    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.transformer = InfillingTransformer(config)
        self.tokenizer: Any = None  # set by load_model when the directory has one
        self.apply(self._init_weights)

    def _get_name(self) -> str:
        return "InfillingLM"  # the repr name; see InfillingDecoderLayer for why it avoids "GLM"

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        cfg = self.config
        p = self.word_embeddings.weight
        qkv = self.transformer.layers[0].attention.query_key_value.weight
        heads = qkv.shape[0] // (3 * cfg.head_dim)  # this rank's heads under tensor parallelism
        return KVCache(cfg.num_layers, batch, heads, max_len, cfg.head_dim, p.device, p.dtype)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, cache: KVCache | None = None) -> GLMOutput:
        b, lq = input_ids.shape
        device = input_ids.device
        spec = self._attention_spec(attention_mask, b, lq, device, cache)
        if position_ids is None:
            start = cache.lengths[:, None] if cache is not None else 0
            pos = start + torch.arange(lq, device=device)[None].expand(b, lq)
            position_ids = torch.stack([pos, torch.zeros_like(pos)], dim=1)
        t = self.transformer
        x = self.word_embeddings(input_ids)
        if self.config.block_position_encoding:
            if position_ids.dim() != 3 or position_ids.shape[1] != 2:
                raise ValueError(f"position_ids must be [B, 2, L] with block_position_encoding, "
                                 f"got {tuple(position_ids.shape)}")
            x = x + t.position_embeddings(position_ids[:, 0]) + t.block_position_embeddings(position_ids[:, 1])
        else:
            x = x + t.position_embeddings(position_ids[:, 0] if position_ids.dim() == 3 else position_ids)
        for i, layer in enumerate(t.layers):
            x = layer(x, spec, cache, i)
        x = t.final_layernorm(x)
        logits = F.linear(x, self.word_embeddings.weight)
        if cache is not None:
            cache.lengths += lq
        return GLMOutput(logits=logits, **self._moe_stats())

    def _attention_spec(self, mask: torch.Tensor | None, b: int, lq: int, device: torch.device,
                        cache: KVCache | None) -> AttentionSpec:
        if mask is not None and mask.dim() == 4:
            if cache is not None:
                raise ValueError("a full [B, 1, L, L] attention_mask cannot be used with a KV cache; pass "
                                 "separator indices [B]")
            if mask.shape[0] not in (1, b) or mask.shape[-2:] != (lq, lq):
                raise ValueError(f"attention_mask {tuple(mask.shape)} does not match input [B={b}, L={lq}]")
            return AttentionSpec(dense=mask.to(device).bool().expand(b, 1, lq, lq))
        if mask is None:
            sep = cache.sep if cache is not None else torch.full((b,), lq, dtype=torch.long, device=device)
        elif mask.numel() == 1:
            sep = mask.reshape(1).long().to(device).expand(b).clone()
        elif mask.numel() == b:
            sep = mask.reshape(b).long().to(device)
        else:
            raise ValueError(f"attention_mask must be [B] separators, a scalar or [B, 1, L, L]; "
                             f"got {tuple(mask.shape)} for batch {b}")
        if cache is None:
            return AttentionSpec(sep=sep)
        cache.sep = sep
        return AttentionSpec(sep=sep, q_offset=cache.lengths.clone(), kv_len=cache.lengths + lq)

    def _moe_stats(self) -> dict[str, Any]:
        moe = [m for m in self.modules() if isinstance(m, MoEMLP)]
        if not moe:
            return {}
        losses = [m.aux_loss for m in moe if m.aux_loss is not None]
        return {
            "moe_aux_loss": torch.stack(losses).sum() if losses else None,
            "moe_dropped": torch.stack([torch.as_tensor(m.dropped) for m in moe]).sum(),
        }


GLMBlock = InfillingDecoderLayer
