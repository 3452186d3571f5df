"""A lorebook entry in the prompt carries its stable id, the key that fired it and its real score, so the page's
"why" panel and /explain never show `lore:None` or a score of 0.00."""

from xdai.persona import load_persona
from xdai.prompt import PromptBuilder


def test_a_fired_entry_shows_its_stable_id_key_and_score():
    persona = load_persona("xiaodai")
    book = persona.character_book
    hits = book.activate(["我们去滑雪吧", "好啊"])  # the key is one message back: decayed score
    assert hits, "xiaodai's lorebook has a skiing entry"
    prompt = PromptBuilder(persona).build("好啊", lore=hits)
    lore = [g for g in prompt.grounding() if g["source_id"].startswith("lore:")]
    assert lore and lore[0]["source_id"] == f"lore:{hits[0].id}" and hits[0].id not in (None, "None")
    assert lore[0]["score"] == hits[0].score == 0.75
    assert "matched='滑雪'" in prompt.explain()
    # a Latin key matches whole words only: "skier" is not "ski"
    assert not [h for h in book.activate(["Who is the best skier in Beijing food?"]) if h.key == "ski"]
