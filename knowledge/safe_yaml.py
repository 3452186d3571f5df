"""YAML with bounds: the one way xdai reads YAML (knowledge sources, personas, bot.yaml, xdai.yaml).

PyYAML composes a document into a node graph in which an alias *is* its anchored node, shared: a few hundred
bytes of nested anchors (a "billion laughs" bomb) compose in microseconds, and every reader that walks the result
as a tree (a persona's located tree, a record copy, a JSON dump) then pays for each use of each alias, gigabytes
of it. `SafeLoader` counts, while composing, how many nodes a tree walk would see, and stops a document
  - whose aliases add more nodes than ``max(max_alias_nodes, alias_ratio x the nodes written out)``,
  - that nests deeper than ``max_depth``, or
  - that holds an alias inside its own anchor (a recursive structure, which no xdai format has a use for),
with a `YAMLBoundsError` at the offending mark, before anything is built. The cost is linear in the text.

This lives in `knowledge` because `knowledge` imports nothing from `xdai`; `xdai` and `bots` import it from here.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["YAMLBoundsError", "RecursiveAliasError", "SafeLoader", "load", "compose"]


class YAMLBoundsError(yaml.MarkedYAMLError):
    """A document over a reader's bounds (alias expansion, nesting). A `yaml.MarkedYAMLError`, so readers that
    already report YAML errors at their file:line report this one the same way; `problem` says what and why."""


class RecursiveAliasError(YAMLBoundsError):
    """An alias used inside the node it refers to."""


class SafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` with bounds on alias expansion and nesting; subclass it to change them."""

    max_depth = 100
    max_alias_nodes = 100_000
    alias_ratio = 1.0

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(anchored node) -> nodes a tree walk of it sees; set once complete
        self._open: list[int] = [0]  # per node being composed: the sizes of its finished children (root's parent first)
        self._own = 0  # nodes written out in the text
        self._aliased = 0  # nodes that aliases add

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is left to PyYAML's own error
                size = self._sizes.get(id(target))
                if size is None:
                    raise RecursiveAliasError(None, None, f"alias *{event.anchor} is used inside its own anchor "
                                              "(a recursive alias)", event.start_mark)
                self._aliased += size
                budget = max(self.max_alias_nodes, int(self.alias_ratio * self._own))
                if self._aliased > budget:
                    raise YAMLBoundsError(
                        None, None, f"aliases expand to more than {budget:,} nodes (at *{event.anchor}, "
                        f"{self._aliased:,} so far, from {self._own:,} written): an alias bomb? write the data "
                        "out instead of nesting anchors", event.start_mark)
                self._open[-1] += size
            return super().compose_node(parent, index)
        if len(self._open) > self.max_depth:
            raise YAMLBoundsError(None, None, f"nested deeper than {self.max_depth} levels", event.start_mark)
        self._open.append(0)
        node = super().compose_node(parent, index)
        size = 1 + self._open.pop()
        self._own += 1
        self._open[-1] += size
        if getattr(event, "anchor", None) is not None:
            self._sizes[id(node)] = size
        return node


def load(text: str | bytes, loader: type[SafeLoader] = SafeLoader) -> Any:
    """Like `yaml.safe_load`, within `loader`'s bounds (YAMLBoundsError otherwise)."""
    return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass


def compose(text: str | bytes, loader: type[SafeLoader] = SafeLoader) -> yaml.Node | None:
    """Like `yaml.compose` (the node graph, with marks), within `loader`'s bounds."""
    return yaml.compose(text, Loader=loader)
