"""Personas (moving into a package: see the modules)."""

from xdai.persona.parse import *  # noqa: F401,F403
