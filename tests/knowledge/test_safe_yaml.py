"""knowledge.safe_yaml: YAML as safe_load reads it, with alias expansion, nesting and recursion bounded."""

from __future__ import annotations

import time

import pytest
import yaml

from knowledge import safe_yaml


def bomb(levels: int, fan: int = 9) -> str:
    lines = ['a0: &a0 ["lol"]'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_plain_documents_load_as_safe_load_does() -> None:
    text = "a: &x {k: 1, l: [1, 2]}\nb: {<<: *x, j: 2}\nc: [*x, *x]\nd: 2024-01-02\ne: ~\n"
    assert safe_yaml.load(text) == yaml.safe_load(text)
    assert safe_yaml.load("") is None
    assert safe_yaml.compose("k: v").value[0][1].value == "v"


@pytest.mark.parametrize("levels", [7, 9, 30])
def test_an_alias_bomb_is_refused_at_the_alias_at_once(levels: int) -> None:
    started = time.monotonic()
    with pytest.raises(safe_yaml.YAMLBoundsError) as err:
        safe_yaml.load(bomb(levels))
    assert time.monotonic() - started < 0.5
    assert err.value.problem == ("aliases expand to more than 100,000 nodes (at *a4, 113,272 so far, from 12 "
                                 "written): an alias bomb? write the data out instead of nesting anchors")
    assert (err.value.problem_mark.line, err.value.problem_mark.column) == (5, 39)
    assert isinstance(err.value, yaml.MarkedYAMLError)  # readers that report YAML errors report this one too


def test_the_bound_is_a_count_or_a_ratio_whichever_is_larger() -> None:
    class Small(safe_yaml.SafeLoader):
        max_alias_nodes = 10

    # nine aliases of a 2-node list add 18 nodes to a document of a few: over max(10, nodes written)
    with pytest.raises(safe_yaml.YAMLBoundsError, match=r"more than 10 nodes \(at \*a0, 12 so far, from 4 written"):
        safe_yaml.load(bomb(1), Small)
    # a large document may alias as much as it writes out: 2,000 nodes written, aliases adding 1,002
    big = "base: &b [" + ", ".join(map(str, range(500))) + "]\n" + "\n".join(f"k{i}: [{i}]" for i in range(500))
    loaded = safe_yaml.load(big + "\nuse: [*b, *b]\n", Small)
    assert loaded["use"] == [list(range(500))] * 2
    with pytest.raises(safe_yaml.YAMLBoundsError, match="more than 2,00[0-9] nodes"):
        safe_yaml.load(big + "\nuse: [*b, *b, *b, *b, *b]\n", Small)


def test_nesting_and_recursion_are_refused() -> None:
    with pytest.raises(safe_yaml.YAMLBoundsError, match="nested deeper than 100 levels"):
        safe_yaml.load("[" * 100_000 + "]" * 100_000)
    assert safe_yaml.load("[" * 99 + "]" * 99) == eval("[" * 99 + "]" * 99)  # noqa: S307 - a literal
    with pytest.raises(safe_yaml.RecursiveAliasError, match=r"alias \*a is used inside its own anchor"):
        safe_yaml.load("x: &a {self: *a}")
    with pytest.raises(yaml.composer.ComposerError, match="found undefined alias"):
        safe_yaml.load("x: *nope")
