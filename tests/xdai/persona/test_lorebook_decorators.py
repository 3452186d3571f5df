"""Character Card V3 decorators: parsed from the head of an entry's content as the spec says (first of a name wins,
unknown or invalid ones ignored, `@@@` fallbacks), trimmed from what is inserted, and each one's rule."""

from __future__ import annotations

from xdai.lorebook import Decorators, parse_decorators, placement
from xdai.persona import BookEntry, CharacterBook, Persona
from xdai.persona.schema import LoreHit


def names(book: CharacterBook, texts: list[str], **chat) -> list[str | None]:
    return [e.name for e in book.triggered(texts, **chat)]


def test_every_supported_decorator_is_read_and_trimmed() -> None:
    content = ("\n@@depth 3\n@@role assistant\n@@activate_only_after 2\n@@activate_only_every 3\n@@scan_depth 5\n"
               "@@position after_desc\n@@additional_keys rain, storm\n@@exclude_keys sun\n@@ignore_on_max_context\n"
               "\n第一行\n@@not_a_decorator here\n")
    d = parse_decorators(content)
    assert d == Decorators(content="第一行\n@@not_a_decorator here", depth=3, role="assistant", activate_only_after=2,
                           activate_only_every=3, scan_depth=5, position="after_char",
                           additional_keys=("rain", "storm"), exclude_keys=("sun",), ignore_on_max_context=True)
    assert d.ignored == ()
    assert parse_decorators("no decorators\n@@depth 2") == Decorators(content="no decorators\n@@depth 2")


def test_first_of_a_name_wins_invalid_and_unknown_are_ignored() -> None:
    d = parse_decorators("@@depth 2\n@@depth 7\n@@role narrator\n@@scan_depth -1\n@@activate_only_every 0\n"
                         "@@risu_thing 4\n@@ \ntext")
    assert (d.depth, d.role, d.scan_depth, d.activate_only_every, d.content) == (2, None, None, None, "text")
    assert d.ignored == ("@@depth 7", "@@role narrator", "@@scan_depth -1", "@@activate_only_every 0",
                         "@@risu_thing 4", "@@")
    assert parse_decorators("@@depth 2.0\nx").depth == 2 and parse_decorators("@@depth 2.5\nx").depth is None
    assert parse_decorators("@@ignore_on_max_context false\nx").ignore_on_max_context is False
    assert parse_decorators("@@position sideways\nx").position is None  # a position we do not have: ignored


def test_fallback_decorators_are_tried_in_order_only_after_an_ignored_one() -> None:
    d = parse_decorators("@@risu_only 4\n@@@agn_only 4\n@@@activate_only_every 4\n@@@scan_depth 9\nx")
    assert d.activate_only_every == 4 and d.scan_depth is None  # the first fallback understood, the rest not
    d = parse_decorators("@@depth 5\n@@@scan_depth 9\nx")
    assert d.depth == 5 and d.scan_depth is None  # the original was understood: its fallback is not read
    d = parse_decorators("@@@depth 5\nx")
    assert d.depth is None and d.content == "x"  # a fallback of nothing


def test_decorators_are_trimmed_from_the_inserted_content_and_kept_in_the_card() -> None:
    entry = BookEntry(name="d", keys=["rain"], content="@@depth 2\n\n下雨了。")
    hit = CharacterBook(entries=[entry]).activate(["rain"])[0]
    assert hit.content == "下雨了。" and entry.content == "@@depth 2\n\n下雨了。"
    p = Persona(name="x", character_book=CharacterBook(entries=[entry]))
    assert Persona.from_card(p.to_card_v3()).character_book.entries[0].content == "@@depth 2\n\n下雨了。"
    # an entry whose content is only decorators inserts nothing (V3: empty content adds nothing)
    assert names(CharacterBook(entries=[BookEntry(name="e", keys=[], constant=True, content="@@depth 1")]), []) == []


def test_activate_only_after_and_every_count_the_bots_replies() -> None:
    book = CharacterBook(entries=[
        BookEntry(name="after", keys=["x"], content="@@activate_only_after 3\n..."),
        BookEntry(name="every", keys=[], constant=True, content="@@activate_only_every 2\n..."),
    ])
    assert names(book, ["x"], replies=1) == [] and names(book, ["x"], replies=2) == ["every"]
    assert names(book, ["x"], replies=3) == ["after"]
    assert names(book, ["x"], replies=4) == ["after", "every"]
    assert names(book, ["x"], replies=0) == ["every"]  # 0 is divisible by 2
    assert names(book, ["x"]) == ["after", "every"]  # replies unknown: both decorators ignored (V3)


def test_additional_and_exclude_keys() -> None:
    book = CharacterBook(entries=[BookEntry(name="e", keys=["umbrella"],
                                            content="@@additional_keys rain, storm\n@@exclude_keys indoors\n...")])
    assert names(book, ["an umbrella"]) == []
    assert names(book, ["storm coming", "an umbrella"]) == ["e"]
    assert names(book, ["storm coming", "an umbrella indoors"]) == []
    assert names(book, ["storms", "an umbrella"]) == []  # whole words, as the entry's keys
    # with regex keys: additional keys are patterns, exclude keys are ignored (V3)
    regex = CharacterBook(entries=[BookEntry(name="r", keys=[r"umbrell(a|as)"], use_regex=True,
                                             content="@@additional_keys ra+in\n@@exclude_keys indoors\n...")])
    assert names(regex, ["raaain, umbrellas indoors"]) == ["r"] and names(regex, ["umbrellas"]) == []
    # the decorators hold for constant entries too (V3: constant fires "if the decorator's conditions are met")
    constant = CharacterBook(entries=[BookEntry(name="c", keys=[], constant=True, content="@@exclude_keys bye\n...")])
    assert names(constant, ["hi"]) == ["c"] and names(constant, ["bye"]) == []


def test_activate_and_dont_activate() -> None:
    book = CharacterBook(entries=[
        BookEntry(name="on", keys=["nothing matches this"], content="@@activate\n..."),
        BookEntry(name="off", keys=[], constant=True, content="@@dont_activate\n..."),
        BookEntry(name="both", keys=[], content="@@dont_activate\n@@activate\n..."),
        BookEntry(name="disabled", keys=[], content="@@activate\n...", enabled=False),  # enabled: false wins
    ])
    assert names(book, ["hi"]) == ["on", "both"]


def test_placement_from_decorators_sillytavern_extensions_and_the_entry() -> None:
    def where(content: str = "...", **kw):
        p = placement(BookEntry(keys=[], content=content, **kw))
        return (p.position, p.depth, p.role, p.ignore_on_max_context)

    assert where() == ("before_char", None, None, False)
    assert where(position="after_char") == ("after_char", None, None, False)
    assert where("@@position before_desc\n@@depth 2\n...", position="after_char") == ("before_char", None, None, False)
    assert where("@@position personality\n...") == ("personality", None, None, False)
    assert where("@@position scenario\n@@ignore_on_max_context\n...") == ("scenario", None, None, True)
    assert where("@@depth 2\n@@role user\n...") == ("at_depth", 2, "user", False)
    assert where("@@depth 0\n...") == ("at_depth", 1, None, False)  # below 1: right before the utterance
    st = {"position": 4, "depth": 3, "role": 2}
    assert where(extensions=st) == ("at_depth", 3, "assistant", False)
    assert where(extensions={"position": 4, "depth": 0}) == ("at_depth", 1, "system", False)
    assert where(extensions={"position": 2, "depth": 3}, position="after_char") == ("after_char", None, None, False)
    assert where("@@role user\n...", extensions=st) == ("at_depth", 3, "user", False)  # the decorator wins
    hit = CharacterBook(entries=[BookEntry(name="e", keys=[], constant=True, content="@@depth 4\n@@role user\n.")]
                        ).activate([])[0]
    assert isinstance(hit, LoreHit) and (hit.position, hit.depth, hit.role) == ("at_depth", 4, "user")
