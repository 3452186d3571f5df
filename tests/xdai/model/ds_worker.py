"""One rank of the DeepSpeed-Inference check (run by test_parallel.py as a subprocess, one per rank).

Builds the same seeded tiny GLM(-MoE) on every rank, wraps it with `xdai.model.parallel.init_inference`
(tp_size, ep_size from argv) and prints, as JSON, the largest logit difference to the plain model and whether
greedy cached generation through the engine's module gives the same tokens.
"""

import json
import sys

import torch

from tests.helpers import tiny_model  # the repository root is on PYTHONPATH (test_parallel.py puts it there)
from xdai.generation import GenerationSettings
from xdai.model import SpecialIds, fill_ids
from xdai.model.parallel import init_inference


def main() -> None:
    tp, ep, config = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    model = tiny_model(seed=3, **config)
    torch.manual_seed(9)
    ids = torch.randint(0, 150, (2, 8))
    pos = torch.stack([torch.arange(8).expand(2, 8), torch.zeros(2, 8, dtype=torch.long)], dim=1)
    sep = torch.tensor([5, 8])
    special = SpecialIds(sop=150, eop=151, masks=(152,), pad=0, vocab_limit=155)
    prompts = [[3, 4, 152, 5], [6, 152]]
    settings = GenerationSettings(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_tokens=4)
    with torch.no_grad():
        ref = model(ids, pos, sep).logits
    ref_fill = fill_ids(model, prompts, special, settings)
    engine = init_inference(model, tp_size=tp, ep_size=ep, dtype=torch.float32)
    with torch.no_grad():
        out = engine(ids, pos, sep).logits
    fill = fill_ids(engine.module, prompts, special, settings)
    local_qkv = engine.module.transformer.layers[0].attention.query_key_value.weight.shape[0]
    print(json.dumps({"rank": torch.distributed.get_rank(), "world": torch.distributed.get_world_size(),
                      "max_diff": float((out - ref).abs().max()), "same_fill": fill == ref_fill,
                      "qkv_rows": local_qkv, "engine": type(engine).__name__}))


if __name__ == "__main__":
    main()
