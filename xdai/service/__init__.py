"""The WebSocket service: protocol, sessions, the turn engine and the server (see docs/protocol.md)."""
