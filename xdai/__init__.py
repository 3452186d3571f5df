"""xdai: knowledge-grounded, persona-driven dialogue agents in the style of XDAI (KDD 2022)."""

__version__ = "0.1.0"
