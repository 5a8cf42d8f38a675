"""``weft.sync.client``: the blocking client under the module path websocket-rs 0.7 uses."""
