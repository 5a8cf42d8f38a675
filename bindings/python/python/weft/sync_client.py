"""Blocking WebSocket client (the API of ``websocket_rs.sync_client``).

>>> from weft.sync_client import connect
>>> with connect("ws://127.0.0.1:9001/") as ws:      # doctest: +SKIP
...     ws.send("hello")
...     print(ws.recv())

``connect(url, connect_timeout=30.0, receive_timeout=30.0, **options)`` returns a
:class:`WebSocket`. Options (keyword-only): ``headers`` (mapping or (name, value) pairs),
``subprotocols``, ``compression`` (permessage-deflate, default off), ``max_size`` (bytes,
default 64 MiB, ``None`` for no limit; larger messages close the connection with 1009),
``ping_interval``/``ping_timeout`` (seconds; pings are sent while a ``recv`` is waiting),
``close_timeout``, ``ca_file`` (PEM; default: the system's roots), ``server_hostname``,
``keepalive_thread`` (default off: a thread that, while the application is not in ``recv``,
answers pings, sends the keep-alive pings and reads their pongs, reading up to ``max_queue``
messages ahead).

Each call that can block releases the GIL. One thread may ``send`` while another waits in
``recv``.
"""

from ._weft import WebSocket, connect

__all__ = ["connect", "WebSocket"]
