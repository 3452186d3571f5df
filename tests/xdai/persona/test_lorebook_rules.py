"""Lorebook activation rules (xdai.lorebook), each on small fixed inputs: selective logic over the scanned
messages, case sensitivity and scan depth per entry, bounded recursion, the book's token budget, seeded
probability."""

from __future__ import annotations

from xdai.lorebook import Chat, activate, roll
from xdai.persona import AND_ALL, AND_ANY, NOT_ALL, NOT_ANY, BookEntry, CharacterBook


def names(book: CharacterBook, texts: list[str], **chat) -> list[str | None]:
    return [e.name for e in book.triggered(texts, **chat)]


def test_selective_logic_is_checked_over_all_the_scanned_messages() -> None:
    def fires(logic: int, texts: list[str]) -> bool:
        e = BookEntry(name="cat", keys=["cat"], secondary_keys=["black", "small"], selective=True, content="...",
                      extensions={"selectiveLogic": logic})
        return bool(CharacterBook(entries=[e]).triggered(texts))

    # the secondary key two messages back counts, as in SillyTavern's scan buffer
    assert fires(AND_ANY, ["it was black", "a cat"]) and not fires(AND_ANY, ["a cat"])
    assert fires(AND_ALL, ["small", "black", "cat"]) and not fires(AND_ALL, ["small", "cat"])
    assert not fires(NOT_ANY, ["a black dog", "a cat"]) and fires(NOT_ANY, ["a dog", "a cat"])
    assert not fires(NOT_ALL, ["small", "black", "cat"]) and fires(NOT_ALL, ["small", "cat"])
    # the age is that of the newest message holding a primary key
    e = BookEntry(name="cat", keys=["cat"], secondary_keys=["black"], selective=True, content="...")
    hit = CharacterBook(entries=[e]).activate(["black", "cat", "ok"])[0]
    assert (hit.key, hit.age, hit.score) == ("cat", 1, 0.75)


def test_case_sensitivity_per_entry_field_or_sillytavern_extension() -> None:
    book = CharacterBook(entries=[
        BookEntry(name="field", keys=["Rome"], content="...", case_sensitive=True),
        BookEntry(name="ext", keys=["Rome"], content="...", extensions={"case_sensitive": True}),
        BookEntry(name="loose", keys=["Rome"], content="..."),
    ])
    assert names(book, ["rome wasn't built"]) == ["loose"]
    assert names(book, ["Rome wasn't built"]) == ["field", "ext", "loose"]


def test_scan_depth_per_entry_overrides_the_book_and_the_default() -> None:
    book = CharacterBook(entries=[
        BookEntry(name="book", keys=["dragon"], content="..."),
        BookEntry(name="ext", keys=["dragon"], content="...", extensions={"scan_depth": 3}),
        BookEntry(name="deco", keys=["dragon"], content="@@scan_depth 4\n..."),
        BookEntry(name="zero", keys=["dragon"], content="@@scan_depth 0\n..."),
    ])
    texts = ["hello", "a dragon!", "where?", "there", "ok"]  # the key is in the 4th message from the end
    assert names(book, texts) == ["book", "deco"]  # the book has no depth: all messages; ext scans 3, zero none
    assert names(book, texts, default_scan_depth=2) == ["deco"]  # the caller's default for entries without one
    book.scan_depth = 5
    assert names(book, texts, default_scan_depth=2) == ["book", "deco"]  # the book's wins over the default
    book.scan_depth = 1
    assert names(book, texts) == ["deco"]  # ext scans 3, deco 4 (V3: regardless of the book's)
    assert names(book, ["a dragon!", "where?", "ok"]) == ["ext", "deco"]


def chain(n: int, **ext) -> CharacterBook:
    """e0 (key k0) says k1, e1 says k2, ...: each fires the next through its content."""
    return CharacterBook(recursive_scanning=True, extensions=ext, entries=[
        BookEntry(name=f"e{i}", keys=[f"k{i}"], content=f"see k{i + 1}", insertion_order=i) for i in range(n)])


def test_recursion_is_bounded_by_steps() -> None:
    assert names(chain(9), ["k0"]) == [f"e{i}" for i in range(6)]  # the first match and 5 recursion steps
    assert names(chain(9, max_recursion_steps=2), ["k0"]) == ["e0", "e1", "e2"]
    assert names(chain(9, max_recursion_steps=0), ["k0"]) == [f"e{i}" for i in range(9)]  # 0: until nothing new
    book = chain(9)
    book.recursive_scanning = False
    assert names(book, ["k0"]) == ["e0"]
    # a cycle ends: each entry fires once
    loop = CharacterBook(recursive_scanning=True, extensions={"max_recursion_steps": 0}, entries=[
        BookEntry(name="a", keys=["A"], content="B"), BookEntry(name="b", keys=["B"], content="A")])
    hits = loop.activate(["A"])
    assert [(h.entry.name, h.age, h.score) for h in hits] == [("a", 0, 1.0), ("b", -1, 0.5)]


def test_sillytavern_recursion_flags() -> None:
    book = chain(4)
    book.entries[1].extensions["exclude_recursion"] = True  # never fired by another entry's content
    assert names(book, ["k0"]) == ["e0"] and names(book, ["k0 k1"]) == ["e0", "e1", "e2", "e3"]
    book = chain(4)
    book.entries[1].extensions["prevent_recursion"] = True  # its content fires nothing
    assert names(book, ["k0"]) == ["e0", "e1"]
    book = chain(4)
    book.entries[2].extensions["delay_until_recursion"] = True  # only through another entry's content
    assert names(book, ["k2"]) == [] and names(book, ["k1"]) == ["e1", "e2", "e3"]


def test_recursion_checks_secondary_keys_over_the_chat_and_the_content() -> None:
    book = CharacterBook(recursive_scanning=True, entries=[
        BookEntry(name="sea", keys=["东海"], content="东海有龙王。"),
        BookEntry(name="king", keys=["龙王"], secondary_keys=["水晶宫"], selective=True, content="龙王住在水晶宫。"),
    ])
    assert names(book, ["说说东海"]) == ["sea"]
    assert names(book, ["水晶宫在哪？说说东海"]) == ["sea", "king"]  # key from sea's content, secondary from the chat


def test_token_budget_drops_lowest_priority_then_lowest_order() -> None:
    def entry(name: str, size: int, order: int, priority: int | None = None) -> BookEntry:
        return BookEntry(name=name, keys=[], constant=True, content="x" * size, insertion_order=order,
                         priority=priority)

    book = CharacterBook(token_budget=10, entries=[
        entry("a", 4, 1), entry("b", 4, 2), entry("c", 4, 3), entry("d", 4, 0, priority=9)])
    count = len  # one token per character
    assert names(book, [], count_tokens=count) == ["d", "c"]  # d by priority; a, then b go first (lowest order)
    book.token_budget = 16
    assert names(book, [], count_tokens=count) == ["d", "a", "b", "c"]
    book.token_budget = 3
    assert names(book, [], count_tokens=count) == []
    book.token_budget = None
    assert len(names(book, [], count_tokens=count)) == 4
    # the default count is the prompt's estimate: one token per CJK character
    cjk = CharacterBook(token_budget=5, entries=[BookEntry(name="short", keys=[], constant=True, content="四个汉字"),
                                                 BookEntry(name="long", keys=[], constant=True, content="六个汉字啊呀")])
    assert names(cjk, []) == ["short"]  # a tie: the later entry goes first (6 tokens), then 4 fit
    # a budget counts the content without its decorators
    deco = CharacterBook(token_budget=4, entries=[BookEntry(name="d", keys=[], constant=True,
                                                            content="@@depth 2\n@@role user\nabcd")])
    assert names(deco, [], count_tokens=count) == ["d"]


def test_probability_is_seeded_and_reproducible() -> None:
    def entry(p, use=True):
        return BookEntry(name=f"p{p}", keys=["rain"], content="...", extensions={"probability": p, "useProbability": use})

    book = CharacterBook(entries=[entry(0), entry(100), entry(30), entry(0, use=False)])
    fired = {n: 0 for n in ("p0", "p100", "p30")}
    for replies in range(400):
        got = names(book, ["rain again"], replies=replies, seed=7)
        assert got == names(book, ["rain again"], replies=replies, seed=7)  # same point, same seed: same roll
        for n in got:
            fired[n] = fired.get(n, 0) + 1
    assert fired["p0"] == 400  # the one with useProbability false ignores its probability
    assert fired["p100"] == 400
    assert 90 <= fired["p30"] <= 150  # about 30% of 400
    seeds = {s: tuple("p30" in names(book, ["rain"], replies=r, seed=s) for r in range(40)) for s in (1, 2)}
    assert seeds[1] != seeds[2]  # another seed, other rolls
    assert 0 <= roll(1, "x", 3, 2) < 100 and roll(1, "x", 3, 2) == roll(1, "x", 3, 2)


def test_probability_applies_to_constant_entries_and_a_failed_roll_fires_nothing_recursively() -> None:
    book = CharacterBook(recursive_scanning=True, entries=[
        BookEntry(name="never", keys=[], constant=True, content="k1", extensions={"probability": 0}),
        BookEntry(name="e1", keys=["k1"], content="..."),
    ])
    assert names(book, ["hi"]) == []


def test_the_chat_object_is_what_the_book_method_builds() -> None:
    book = chain(3)
    chat = Chat(["k0"], scan_depth=None, replies=2, seed=3)
    assert activate(book, chat) == book.activate(["k0"], replies=2, seed=3)
