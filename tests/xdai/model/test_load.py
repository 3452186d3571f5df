"""Checkpoint directories in THUDM's hub layout: loading by name, strict keys, tokenizer, CLI, glm backend."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
import torch
from click.testing import CliRunner

from tests.helpers import thudm_state_dict, tiny_model, write_hub_checkpoint
from xdai.generation import GenerationSettings, Infill
from xdai.model import CheckpointError, GLMTokenizer, fill_text, load_model, save_model, stream_spans

GREEDY = GenerationSettings(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_tokens=5)


def _inputs():
    ids = torch.randint(0, 120, (2, 8))
    pos = torch.stack([torch.arange(8).expand(2, 8), torch.zeros(2, 8, dtype=torch.long)], dim=1)
    return ids, pos, torch.tensor([5, 8])


@pytest.mark.parametrize(("prefix", "safetensors"), [("glm.", False), ("", True)], ids=["bin-glm-prefix", "st"])
def test_load_hub_layout_by_name(tmp_path, sp_model, prefix, safetensors):
    source = tiny_model(seed=2)
    directory = write_hub_checkpoint(tmp_path / "ckpt", source, sp_model, prefix=prefix, safetensors=safetensors)
    loaded = load_model(directory)
    assert loaded.config.extra["model_type"] == "glm"  # hub keys kept, not dropped
    ids, pos, sep = _inputs()
    torch.testing.assert_close(loaded(ids, pos, sep).logits, source(ids, pos, sep).logits)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    source = tiny_model()
    directory = write_hub_checkpoint(tmp_path / "ckpt", source, prefix="")
    state = thudm_state_dict(source)
    del state["transformer.layers.1.mlp.dense_4h_to_h.bias"]
    state["transformer.layers.0.attention.rotary.inv_freq"] = torch.zeros(3)
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        load_model(directory)
    message = str(err.value)
    assert str(directory) in message
    assert "1 missing keys: transformer.layers.1.mlp.dense_4h_to_h.bias" in message
    assert "1 unexpected keys: transformer.layers.0.attention.rotary.inv_freq" in message


def test_shape_mismatch_names_the_parameter(tmp_path):
    directory = write_hub_checkpoint(tmp_path / "ckpt", tiny_model(), prefix="")
    config = json.loads((directory / "config.json").read_text())
    config["vocab_size"] = 200
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"word_embeddings.weight has shape \(160, 32\).*\(200, 32\)"):
        load_model(directory)


def test_bad_config_json_names_the_place(tmp_path):
    directory = write_hub_checkpoint(tmp_path / "ckpt", tiny_model(), prefix="")
    (directory / "config.json").write_text('{"num_layers": 2,\n "hidden_size": }')
    with pytest.raises(ValueError, match=r"config.json:2:\d+"):
        load_model(directory)


def test_tokenizer_reads_command_ids_from_the_directory(hub_dir):
    tok = GLMTokenizer.from_dir(hub_dir)
    n = tok.num_text_tokens
    added = json.loads((hub_dir / "added_tokens.json").read_text())
    assert tok.sop_id == added["<|startofpiece|>"] and tok.eop_id == added["<|endofpiece|>"]
    assert tok.command_ids["[sMASK]"] == n + 7 and tok.command_ids["[gMASK]"] == n + 8  # as written there
    ids = tok.encode_prompt("清华大学位于[MASK]。")
    assert ids[0] == tok.cls_id and ids[-1] == tok.eos_id and tok.command_ids["[MASK]"] in ids
    assert tok.decode(tok.encode("故宫是明清两代的皇宫")) == "故宫是明清两代的皇宫"


def test_default_layout_and_fix_command_token(sp_model):
    plain = GLMTokenizer(sp_model)
    fixed = GLMTokenizer(sp_model, fix_command_token=True)
    n = plain.num_text_tokens
    assert plain.command_ids["[gMASK]"] == n + 7 and plain.command_ids["[sMASK]"] == n + 8
    assert fixed.command_ids["[gMASK]"] == n + 8 and fixed.command_ids["[sMASK]"] == n + 7


def test_save_and_reload_round_trip_with_moe(tmp_path, sp_model):
    model = tiny_model(moe_layers=[1], num_experts=3, moe_top_k=2, moe_shared_expert=True)
    model.tokenizer = GLMTokenizer(sp_model)
    save_model(model, tmp_path / "moe", safetensors=True)
    loaded = load_model(tmp_path / "moe")
    assert loaded.config.moe_layers == [1] and loaded.tokenizer is not None
    ids, pos, sep = _inputs()
    torch.testing.assert_close(loaded(ids, pos, sep).logits, model(ids, pos, sep).logits)


def test_fill_text_and_streaming_agree(hub_dir):
    model = load_model(hub_dir)
    texts = ["清华大学位于[MASK]。", "故宫[MASK]皇宫，[sMASK]北京。"]
    filled = fill_text(model, texts, GREEDY)
    assert len(filled) == 2 and len(filled[1].spans) == 2
    assert "[MASK]" not in filled[0].text and filled[0].text.startswith("清华大学位于")
    streamed = "".join(piece for span, piece in stream_spans(model, texts[0], GREEDY) if span == 0)
    assert streamed == filled[0].spans[0]


def test_cli_info_and_generate(hub_dir):
    from xdai.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["model", "info", str(hub_dir)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["config"]["num_layers"] == 2 and "[MASK]" in info["tokenizer"]["command_tokens"]
    result = runner.invoke(main, ["model", "generate", str(hub_dir), "清华大学位于[MASK]。", "--max-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("清华大学位于")
    result = runner.invoke(main, ["model", "upcycle", str(hub_dir), str(hub_dir.parent / "moe"), "--experts", "2"])
    assert result.exit_code == 0, result.output
    assert load_model(hub_dir.parent / "moe").config.num_experts == 2


def test_glm_backend_fills_and_scores(hub_dir):
    from xdai.backends import get_backend
    from xdai.backends.base import Backend

    backend = get_backend("glm", model=str(hub_dir))
    assert isinstance(backend, Backend) and backend.name == "glm"
    assert backend.prompt(Infill("你好", "再见")) == "你好[MASK]再见"

    async def collect():
        return [p async for p in backend.fill(Infill(before="今天天气很好，", after="吧。"), GREEDY)]

    pieces = asyncio.run(collect())
    assert all(isinstance(p, str) for p in pieces)

    async def collect_long():  # a context longer than max_sequence_length (64): truncated on the left
        long = Infill(before="今天天气很好，我们一起去爬山吧。" * 12, after="吧。")
        return [p async for p in backend.fill(long, GenerationSettings(temperature=0.0, max_tokens=200))]

    assert all(isinstance(p, str) for p in asyncio.run(collect_long()))
    score = backend.score("清华大学位于", "北京")
    assert math.isfinite(score) and score < 0


def test_command_tokens_other_than_end_of_piece_are_never_sampled(hub_dir):
    from xdai.model import SpecialIds, stream_fill

    model = load_model(hub_dir)
    tok = model.tokenizer
    special = SpecialIds.from_tokenizer(tok)
    with torch.no_grad():  # make the command tokens the most likely ones
        for i in special.banned:
            model.word_embeddings.weight[i] *= 20
    settings = GenerationSettings(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_tokens=12,
                                  seed=0)
    steps = list(stream_fill(model, [tok.encode_prompt("今天[MASK]")] * 2, special, settings))
    produced = {t for step in steps for t in step if t is not None}
    assert produced and not produced & set(special.banned)
    assert tok.cls_id in special.banned and tok.eop_id not in special.banned


def test_sharded_checkpoint_with_index(tmp_path):
    source = tiny_model(seed=6)
    directory = write_hub_checkpoint(tmp_path / "sharded", source, prefix="glm.")
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    (directory / "pytorch_model.bin").unlink()
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for file, keys in shards.items():
        torch.save({k: state[k] for k in keys}, directory / file)
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ids, pos, sep = _inputs()
    torch.testing.assert_close(load_model(directory)(ids, pos, sep).logits, source(ids, pos, sep).logits)
