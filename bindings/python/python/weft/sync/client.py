"""Alias of :mod:`weft.sync_client` at websocket-rs 0.7's path ``websocket_rs.sync.client``."""

from ..sync_client import WebSocket, connect

ClientConnection = WebSocket

__all__ = ["connect", "ClientConnection", "WebSocket"]
