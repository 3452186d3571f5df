"""--generate-qa: QA pairs written from descriptions by a real model backend (SmolLM2-135M through llama.cpp)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from xdai.cli import main


@pytest.mark.slow
def test_build_with_generated_qa(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("llama_cpp")
    monkeypatch.setenv("XDAI_BACKEND_NAME", "llama_cpp")
    monkeypatch.setenv("XDAI_BACKEND_MODEL", "smollm2")
    monkeypatch.setenv("XDAI_BACKEND_N_CTX", "1024")
    monkeypatch.setenv("XDAI_BACKEND_THREADS", "1")  # a shared CPU: one thread does not wait on a descheduled peer
    notes = tmp_path / "louvre.md"
    notes.write_text("# Louvre\n\nThe Louvre is the world's most-visited museum, in Paris. It houses the Mona Lisa.\n")
    result = CliRunner().invoke(main, ["knowledge", "build", str(notes), "--out", str(tmp_path / "kb"), "--generate-qa",
                                       "--json", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["by_kind"] == {"description": 1, "qa": 1}
    from knowledge.store import Store

    (qa,) = [it for it in Store.open(tmp_path / "kb").items if it.kind == "qa"]
    assert qa.q and qa.a and "generated" in qa.tags and qa.lang == "en"
    assert qa.source_file == str(notes) and qa.source_record == "line 3 (generated QA)"
