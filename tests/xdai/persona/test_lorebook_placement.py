"""Where fired lore goes in the prompt (xdai.prompt's builder): insertion order within a position, before/after
the persona description, with the personality and the scenario, at a depth in the history (1: right before the
utterance) as a plain line or a speaker's line, cut first under @@ignore_on_max_context; and the turn handing the
book the whole conversation, the reply count and the seed."""

from __future__ import annotations

from xdai.history import Exchange, History, ScoredExchange
from xdai.persona import BookEntry, CharacterBook, Persona
from xdai.prompt import Knowledge, PromptBuilder
from xdai.render import ChatRenderer, ChatTemplate


def persona(*entries: BookEntry, **kw) -> Persona:
    fields = dict(name="小呆", description="DESC", personality="PERS", scenario="SCEN", first_mes="嗨！")
    fields.update(kw)
    return Persona(**fields, character_book=CharacterBook(entries=list(entries)))


def constant(name: str, content: str, order: int = 0, **kw) -> BookEntry:
    return BookEntry(name=name, keys=[], constant=True, content=content, insertion_order=order, **kw)


PAIRS = [("U0", "B0"), ("U1", "B1"), ("U2", "B2")]
SELECTION = [ScoredExchange(i, Exchange(u, b), 1.0, 0.5, 0.5, selected=True) for i, (u, b) in enumerate(PAIRS)]


def lines(p: Persona, utterance: str = "NOW", **build) -> list[str]:
    hits = p.character_book.activate([utterance])
    prompt = PromptBuilder(p).build(utterance, lore=hits, **build)
    return prompt.render().before.split("\n")


def test_positions_around_the_persona_and_insertion_order() -> None:
    p = persona(constant("late", "BEFORE-2", 20), constant("early", "BEFORE-1", 10),
                constant("after", "AFTER", position="after_char"),
                constant("desc", "@@position after_desc\nAFTER-DESC"),
                constant("pers", "@@position personality\nWITH-PERS"),
                constant("scen", "@@position scenario\nWITH-SCEN"))
    got = lines(p)
    at = {text: got.index(text) for text in ("BEFORE-1", "BEFORE-2", "AFTER", "AFTER-DESC", "WITH-PERS", "WITH-SCEN")}
    desc = next(i for i, line in enumerate(got) if line.endswith("DESC") and "AFTER" not in line)
    pers = next(i for i, line in enumerate(got) if line.endswith("PERS"))
    scen = next(i for i, line in enumerate(got) if line.endswith("SCEN"))
    assert at["BEFORE-1"] < at["BEFORE-2"] < desc < pers < at["WITH-PERS"] < scen < at["WITH-SCEN"]
    assert at["WITH-SCEN"] < at["AFTER"] and at["WITH-SCEN"] < at["AFTER-DESC"] < got.index("用户：NOW")
    # without a personality section the decorator is ignored: the entry's own position
    bare = persona(constant("pers", "@@position personality\nWITH-PERS", position="after_char"), personality="")
    got = lines(bare)
    assert got.index("WITH-PERS") > next(i for i, line in enumerate(got) if line.endswith("DESC"))


def test_at_depth_counts_messages_back_from_the_utterance() -> None:
    p = persona(constant("d1", "@@depth 1\nDEPTH-1"), constant("d3", "@@depth 3\nDEPTH-3"),
                constant("d4", "@@depth 4\nDEPTH-4"), constant("d99", "@@depth 99\nDEPTH-99"),
                constant("user", "@@depth 1\n@@role user\n我也想去", order=5),
                constant("bot", "@@depth 2\n@@role assistant\n{{user}}别急", order=5))
    knowledge = Knowledge(kind="qa", text="q a", q="Q?", a="A.", score=0.9, id="k")
    got = lines(p, selection=SELECTION, utterance_knowledge=knowledge)
    assert got[3:] == [
        "DEPTH-99",  # past the oldest message: before it
        "用户：U0", "小呆：B0",
        "DEPTH-4",  # 4 back is B1: before the exchange holding it
        "用户：U1", "小呆：B1",
        "DEPTH-3", "小呆：用户别急",  # 3 (U2) and 2 (B2): before the last exchange, by insertion_order
        "用户：U2", "小呆：B2",
        "DEPTH-1", "用户：我也想去",  # 1: before the utterance, and before the QA pair said right before it
        "用户：Q?", "小呆：A.", "用户：NOW", "小呆：",
    ]
    assert got[2].endswith("SCEN")


def test_at_depth_in_a_chat_rendering_is_a_turn_of_its_role() -> None:
    p = persona(constant("user", "@@depth 1\n@@role user\nLORE-USER"),
                constant("bot", "@@depth 3\n@@role assistant\nLORE-BOT"),
                constant("sys", "@@depth 2\nLORE-SYS"))
    prompt = PromptBuilder(p).build("NOW", selection=SELECTION, lore=p.character_book.activate(["NOW"]))
    messages = ChatRenderer(ChatTemplate("{% for m in messages %}{{ m.role }}:{{ m.content }}|{% endfor %}")
                            ).messages(prompt)
    roles = [(m["role"], m["content"]) for m in messages]
    assert roles[0][0] == "system" and "LORE-SYS" in roles[0][1]
    assert ("assistant", "B1\nLORE-BOT") in roles  # merged with the bot turn before it (templates alternate)
    assert roles[-1][0] == "user" and roles[-1][1].startswith("LORE-USER")


def test_ignore_on_max_context_lore_is_cut_first_and_why_shows_where() -> None:
    p = persona(constant("keep", "保留的设定。" * 3, priority=5), constant("cut", "@@ignore_on_max_context\n可舍弃。"),
                mes_example=[])
    builder = PromptBuilder(p)
    hits = p.character_book.activate(["NOW"])
    full = builder.build("NOW", lore=hits, selection=SELECTION[2:], budget_tokens=10_000)
    cut = builder.build("NOW", lore=hits, selection=SELECTION[2:], budget_tokens=full.tokens - 1)
    assert [d.why["id"] for d in cut.dropped] == ["lore:cut"]  # before the exchange, before other lore
    depth = persona(constant("d", "@@depth 2\n@@role user\nX"))
    part = next(q for q in PromptBuilder(depth).build("NOW", lore=depth.character_book.activate(["NOW"])).parts
                if q.kind == "lore")
    assert (part.why["position"], part.why["depth"], part.why["role"], part.why["text"]) == ("at_depth", 2, "user", "X")


def test_the_turn_passes_the_whole_conversation_the_reply_count_and_the_seed() -> None:
    from xdai.turn import Agent

    p = persona(
        BookEntry(name="deep", keys=["dragon"], content="@@scan_depth 10\nDEEP"),
        BookEntry(name="shallow", keys=["dragon"], content="SHALLOW"),
        BookEntry(name="later", keys=[], constant=True, content="@@activate_only_after 4\nLATER"),
        BookEntry(name="coin", keys=[], constant=True, content="COIN", extensions={"probability": 50}),
        generation={"seed": 11},
    )
    p.selection.lore_scan_turns = 1
    agent = Agent(p, backend=None)
    history = History()
    for user, bot in [("a dragon!", "where?"), ("over there", "hm"), ("ok", "fine")]:
        history.append(user, bot)
    ids = {x.why["id"] for x in agent.build_prompt(history, "so?").parts if x.kind == "lore"}
    assert "lore:deep" in ids and "lore:shallow" not in ids  # the key is 7 messages back; lore_scan_turns is 1
    assert "lore:later" in ids  # the greeting and 3 replies: 4
    history.exchanges.pop()
    again = {x.why["id"] for x in agent.build_prompt(history, "so?").parts if x.kind == "lore"}
    assert "lore:later" not in again
    coins, expected = [], []
    for n in range(8):  # the coin is rolled per point in the conversation, seeded by generation.seed
        h = History()
        for k in range(n):
            h.append(f"u{k}", f"b{k}")
        coins.append("lore:coin" in {x.why["id"] for x in agent.build_prompt(h, "so?").parts if x.kind == "lore"})
        messages = [t for ex in h.exchanges for t in (ex.user, ex.bot)] + ["so?"]
        expected.append("coin" in [e.name for e in p.character_book.triggered(messages, replies=n + 1, seed=11)])
    assert coins == expected and True in coins and False in coins
