"""wse-server's standalone Rust server as a fan-out peer for `weft bench fanout --protocol plain`.

The host application does what the wse README describes: it drains inbound events in batches,
subscribes connections with `subscribe_connection`, and publishes with `broadcast_local`.
`S <topic>` subscribes the sending connection (answered `{"type":"subscribed","ok":true}`);
`P <topic> <event>` broadcasts `<event>` verbatim to the topic. Needs Python >= 3.12 and
`pip install wse-server==2.5.1`.
"""

import argparse
import signal
import sys

from wse_server._wse_accel import RustWSEServer

SUBSCRIBED = '{"type":"subscribed","ok":true}'


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9401)
    ap.add_argument("--max-connections", type=int, default=30000)
    args = ap.parse_args()
    server = RustWSEServer(
        "127.0.0.1",
        args.port,
        max_connections=args.max_connections,
        # The publisher sends far more than the default per-connection inbound budget.
        rate_limit_capacity=1e12,
        rate_limit_refill=1e12,
        max_inbound_queue_size=1 << 20,
    )
    server.enable_drain_mode()
    server.start()
    print(f"wse-server fan-out on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    subscribe, broadcast, send = server.subscribe_connection, server.broadcast_local, server.send
    while running:
        for kind, conn, data in server.drain_inbound(4096, 50):
            if kind != "raw":
                continue
            if data.startswith("P "):
                _, topic, body = data.split(" ", 2)
                broadcast(topic, body)
            elif data.startswith("S "):
                subscribe(conn, [data[2:]])
                send(conn, SUBSCRIBED)
    server.stop()


if __name__ == "__main__":
    main()
