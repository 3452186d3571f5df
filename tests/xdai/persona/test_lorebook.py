"""CharacterBook.triggered: keys, case sensitivity, selective secondary keys, constant, disabled, order."""

from __future__ import annotations

from xdai.persona import AND_ALL, NOT_ALL, NOT_ANY, BookEntry, CharacterBook, Persona


def names(book: CharacterBook, texts: list[str]) -> list[str | None]:
    return [e.name for e in book.triggered(texts)]


def test_keys_case_constant_disabled_and_order() -> None:
    book = CharacterBook(entries=[
        BookEntry(name="ski", keys=["Ski", "滑雪"], content="...", insertion_order=30),
        BookEntry(name="exact", keys=["GLM"], content="...", insertion_order=10, case_sensitive=True),
        BookEntry(name="always", keys=[], content="...", insertion_order=20, constant=True),
        BookEntry(name="off", keys=["ski"], content="...", insertion_order=0, enabled=False),
        BookEntry(name="off-constant", keys=[], content="...", constant=True, enabled=False),
    ])
    assert names(book, ["I love SKIING"]) == ["always", "ski"]  # case-insensitive by default
    assert names(book, ["我想去滑雪", "glm is great"]) == ["always", "ski"]  # "exact" needs "GLM"
    assert names(book, ["GLM is great", "skiing"]) == ["exact", "always", "ski"]  # by insertion_order
    assert names(book, []) == ["always"]


def test_selective_entries_need_a_secondary_key() -> None:
    entry = BookEntry(name="exam", keys=["考试"], secondary_keys=["紧张", "担心"], selective=True, content="...")
    book = CharacterBook(entries=[entry])
    assert names(book, ["明天考试"]) == []
    assert names(book, ["明天考试", "有点紧张"]) == ["exam"]
    assert names(book, ["好紧张"]) == []  # a secondary key alone never fires
    entry.selective = False
    assert names(book, ["明天考试"]) == ["exam"]  # not selective: secondary keys are ignored


def test_selective_logic_from_extensions() -> None:
    def fires(logic: int, text: str) -> bool:
        e = BookEntry(keys=["cat"], secondary_keys=["black", "small"], selective=True, content="...",
                      extensions={"selectiveLogic": logic})
        return bool(CharacterBook(entries=[e]).triggered([text]))

    assert fires(AND_ALL, "a small black cat") and not fires(AND_ALL, "a black cat")
    assert fires(NOT_ANY, "a cat") and not fires(NOT_ANY, "a black cat")
    assert fires(NOT_ALL, "a black cat") and not fires(NOT_ALL, "a small black cat")


def test_scan_depth_and_recursive_scanning() -> None:
    book = CharacterBook(scan_depth=1, entries=[
        BookEntry(name="bar", keys=["金箍棒"], content="金箍棒原是东海的定海神针。", insertion_order=1),
        BookEntry(name="sea", keys=["东海"], content="东海龙王住在水晶宫。", insertion_order=2),
    ])
    assert names(book, ["金箍棒呢？", "你好"]) == []  # only the last text is scanned
    assert names(book, ["你好", "金箍棒呢？"]) == ["bar"]
    book.recursive_scanning = True
    assert names(book, ["你好", "金箍棒呢？"]) == ["bar", "sea"]  # found through bar's content


def test_lorebook_from_yaml_honours_case_and_constant(tmp_path) -> None:
    from xdai.persona import load_persona

    path = tmp_path / "p.yaml"
    path.write_text(
        "name: x\ncharacter_book:\n  entries:\n"
        "    - {keys: [Kyoto], content: old capital, case_sensitive: true, insertion_order: 2, name: k}\n"
        "    - {keys: [], content: always, constant: true, insertion_order: 1, name: c}\n",
        encoding="utf-8")
    book = load_persona(path).character_book
    assert names(book, ["kyoto"]) == ["c"] and names(book, ["Kyoto"]) == ["c", "k"]


def test_macros_and_generation_overrides() -> None:
    p = Persona(name="小呆", first_mes="{{user}}你好，我是{{char}}", alternate_greetings=["<USER>, hi from <BOT>"],
                generation={"temperature": 0.5, "stop": ["用户："], "rerank": 2})
    assert p.greeting() == "用户你好，我是小呆" and p.greeting(1) == "用户, hi from 小呆"
    s = p.generation_settings()
    assert (s.temperature, s.stop, s.top_p) == (0.5, ["用户："], 0.9)
    assert p.rerank_options() == {"rerank": 2, "inverse_prompting": False, "inverse_weight": 1.0}
    s.stop.append("x")
    assert p.generation["stop"] == ["用户："]  # settings never alias the persona's lists
