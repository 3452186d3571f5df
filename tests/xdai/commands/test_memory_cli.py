"""`xdai memory list|forget` (issue 15 section 1): the operator's privacy controls over the service's store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from xdai.cli import main
from xdai.memory.items import Fact
from xdai.memory.store import Provenance, SQLiteMemoryStore


def _seeded(tmp_path: Path) -> tuple[dict[str, str], str]:
    db = tmp_path / "sessions.sqlite3"
    store = SQLiteMemoryStore(db)
    [name, home] = store.apply("lilei", "xiaodai", [Fact("name", "李雷"), Fact("location", "杭州")],
                               Provenance("s1", 1, "zh", 1000.0))
    store.apply("lilei", "xiaodai", [Fact("location", "上海")], Provenance("s2", 5, "zh", 2000.0))
    store.apply("lilei", "wukong", [Fact("name", "李雷")], Provenance("s3", 1, "zh", 3000.0))
    store.put_summary("lilei", "xiaodai", "聊过：我叫李雷", Provenance("s1", None, "zh", 1500.0))
    store.close()
    return {"XDAI_SERVER_SQLITE_PATH": str(db), "XDAI_SERVER_SESSION_STORE": "sqlite"}, name.item.id


def test_list_shows_items_with_provenance_and_history(tmp_path: Path) -> None:
    env, _ = _seeded(tmp_path)
    runner = CliRunner(env=env)
    text = runner.invoke(main, ["memory", "list", "--user", "lilei", "--bot", "xiaodai"])
    assert text.exit_code == 0, text.output
    assert "用户住在哪里？ 上海" in text.stdout and "was: 用户住在哪里？ 杭州 (session s1 seq 1)" in text.stdout
    assert "session s2 seq 5" in text.stdout and "聊过：我叫李雷" in text.stdout and "wukong" not in text.stdout
    data = json.loads(runner.invoke(main, ["memory", "list", "--user", "lilei", "--json"]).stdout)
    assert sorted(i["bot"] for i in data) == ["wukong", "xiaodai", "xiaodai", "xiaodai"]
    assert next(i for i in data if i["slot"] == "location")["history"][0]["a"] == "杭州"
    nobody = runner.invoke(main, ["memory", "list", "--user", "hanmeimei"])
    assert nobody.exit_code == 0 and "nothing is remembered of hanmeimei" in nobody.stdout


def test_forget_an_item_all_of_a_bot_or_everything(tmp_path: Path) -> None:
    env, name_id = _seeded(tmp_path)
    runner = CliRunner(env=env)
    one = runner.invoke(main, ["memory", "forget", "--user", "lilei", "--bot", "xiaodai", "--item", name_id])
    assert one.exit_code == 0 and "forgot 2 item(s)" in one.stdout  # the name and the summary of its session
    missing = runner.invoke(main, ["memory", "forget", "--user", "lilei", "--item", name_id])
    assert missing.exit_code != 0 and "no item" in missing.output
    bot = runner.invoke(main, ["memory", "forget", "--user", "lilei", "--bot", "xiaodai"])
    assert "forgot 1 item(s) of lilei for xiaodai" in bot.stdout
    rest = json.loads(runner.invoke(main, ["memory", "list", "--user", "lilei", "--json"]).stdout)
    assert [i["bot"] for i in rest] == ["wukong"]
    assert "forgot 1 item(s)" in runner.invoke(main, ["memory", "forget", "--user", "lilei"]).stdout


def test_bad_names_and_a_missing_database_are_refused(tmp_path: Path) -> None:
    env, _ = _seeded(tmp_path)
    bad = CliRunner(env=env).invoke(main, ["memory", "list", "--user", "Li Lei"])
    assert bad.exit_code == 2 and "--user" in bad.output
    tenant = CliRunner(env=env).invoke(main, ["memory", "list", "--user", "acme/lilei"])
    assert tenant.exit_code == 0 and "nothing is remembered of acme/lilei" in tenant.stdout
    gone = CliRunner(env={"XDAI_SERVER_SQLITE_PATH": str(tmp_path / "none.sqlite3")}).invoke(
        main, ["memory", "list", "--user", "lilei"])
    assert gone.exit_code == 1 and "no session database there" in gone.output


@pytest.mark.slow  # two SmolLM2 turns in the terminal chat
def test_xdai_chat_with_a_user_remembers_across_chats(tmp_path: Path) -> None:
    env = {"XDAI_SERVER_SQLITE_PATH": str(tmp_path / "sessions.sqlite3")}
    args = ["chat", "--model", "smollm2", "--user", "lilei", "--history", str(tmp_path / "a.jsonl")]
    first = CliRunner(env=env).invoke(main, args, input="我叫李雷，住在杭州\n/quit\n")
    assert first.exit_code == 0, first.output
    assert "(remembered: 用户叫李雷; 用户住在杭州)" in first.output
    args[-1] = str(tmp_path / "b.jsonl")  # another chat: the memory, not the history, knows where they live
    second = CliRunner(env=env).invoke(main, args, input="你还记得我住在哪里吗？\n/explain\n/quit\n")
    assert second.exit_code == 0, second.output
    assert "[memory] memory memory:" in second.output and "小呆记得：用户住在杭州" in second.output
