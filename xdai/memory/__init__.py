"""Long-term memory: what a user told a bot, kept across sessions as knowledge about the user (see docs)."""
