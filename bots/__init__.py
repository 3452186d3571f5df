"""Domain bots: persona + knowledge packs + backend + optional flow, declared in bots/NAME/bot.yaml."""
