"""Thin click commands: parse, call the library, print. One module per top-level command."""
