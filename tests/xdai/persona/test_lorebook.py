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
    assert names(book, ["I love to SKI"]) == ["always", "ski"]  # case-insensitive by default
    assert names(book, ["I love SKIING", "a skier"]) == ["always"]  # Latin keys match whole words (issue 12)
    assert names(book, ["我想去滑雪", "glm is great"]) == ["always", "ski"]  # "exact" needs "GLM"
    assert names(book, ["GLM is great", "ski trip"]) == ["exact", "always", "ski"]  # by insertion_order
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
    assert p.rerank_options() == {"rerank": 2, "inverse_prompting": False, "inverse_weight": 1.0, "rerank_slack": 16}
    s.stop.append("x")
    assert p.generation["stop"] == ["用户："]  # settings never alias the persona's lists


def test_latin_keys_match_whole_words_other_scripts_anywhere() -> None:
    book = CharacterBook(entries=[
        BookEntry(name="ski", keys=["ski"], content="..."),
        BookEntry(name="glm", keys=["GLM"], content="...", case_sensitive=True),
        BookEntry(name="雪", keys=["滑雪"], content="..."),
        BookEntry(name="mixed", keys=["K歌"], content="..."),
        BookEntry(name="loose", keys=["ski"], content="...", extensions={"match_whole_words": False}),
    ])
    assert names(book, ["北京有什么好吃的？skier们都去哪？"]) == ["loose"]  # the case: not "ski"
    assert names(book, ["Ski, then hotpot."]) == ["ski", "loose"]  # punctuation is a boundary
    assert names(book, ["我爱滑雪场"]) == ["雪"]  # Chinese keys need no boundary
    assert names(book, ["GLM-130B"]) == ["glm"] and names(book, ["GLMs"]) == []
    assert names(book, ["去K歌吗", "OK歌"]) == ["mixed"]  # a Latin edge needs its boundary, the other does not
    assert names(book, ["ski_lift"]) == ["loose"]  # "_" joins words too


def test_regex_keys_are_opt_in() -> None:
    regex = BookEntry(name="wolf", keys=[r"\bwol(f|ves)\b"], content="...", use_regex=True)
    literal = BookEntry(name="literal", keys=[r"\bwol(f|ves)\b"], content="...")
    broken = BookEntry(name="broken", keys=["(unclosed"], content="...", use_regex=True)
    book = CharacterBook(entries=[regex, literal, broken])
    assert names(book, ["The WOLVES howl"]) == ["wolf"]  # case-insensitive unless case_sensitive
    assert names(book, [r"a \bwol(f|ves)\b key"]) == ["literal"]  # without use_regex: the text itself
    assert names(book, ["(unclosed"]) == []  # an invalid pattern never matches (Card V3)
    regex.case_sensitive = True
    assert names(book, ["The WOLVES howl"]) == [] and names(book, ["a wolf"]) == ["wolf"]
    v2 = BookEntry(name="v2", keys=["^hi"], content="...", card_extra={"use_regex": True})  # kept from a V2 card
    assert names(CharacterBook(entries=[v2]), ["hi there"]) == ["v2"]


def test_entries_have_stable_ids_and_real_scores() -> None:
    book = CharacterBook(recursive_scanning=True, entries=[
        BookEntry(keys=["金箍棒"], content="金箍棒原是东海的定海神针。", id=7),
        BookEntry(keys=["东海"], content="东海龙王住在水晶宫。", name="sea"),
        BookEntry(keys=["hotpot"], content="重庆火锅很辣。"),
        BookEntry(keys=[], content="总在。", constant=True),
    ])
    hits = book.activate(["我们吃hotpot吧", "好", "金箍棒呢？"])
    by_id = {h.id: h for h in hits}
    anon = BookEntry(keys=["hotpot"], content="重庆火锅很辣。").entry_id
    assert anon.startswith("k") and len(anon) == 9 and anon == book.entries[2].entry_id  # same on every load
    assert set(by_id) == {"7", "sea", anon, book.entries[3].entry_id}
    assert (by_id["7"].key, by_id["7"].age, by_id["7"].score) == ("金箍棒", 0, 1.0)  # in the newest message
    assert (by_id[anon].key, by_id[anon].age, by_id[anon].score) == ("hotpot", 2, 0.75 ** 2)
    assert (by_id["sea"].key, by_id["sea"].age, by_id["sea"].score) == ("东海", -1, 0.5)  # through 7's content
    assert by_id[book.entries[3].entry_id].score == 1.0 and by_id[book.entries[3].entry_id].key is None
    assert [h.entry for h in hits] == book.triggered(["我们吃hotpot吧", "好", "金箍棒呢？"])
