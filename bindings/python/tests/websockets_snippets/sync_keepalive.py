# The sync client keeps the connection alive while the application is busy elsewhere (not in
# recv): it answers the server's pings, sends its own keep-alive pings and reads their pongs,
# and reads messages ahead, in order.
import os
import time

from websockets.sync.client import connect

with connect(os.environ["WS_PINGING_URL"], ping_interval=0.05, ping_timeout=2) as ws:
    time.sleep(0.6)  # busy: no recv
    print("latency measured:", ws.latency > 0)
    # The server pinged while we were busy and reports whether the pong came back in time,
    # after the three messages it sent before its ping.
    for _ in range(4):
        print("received:", ws.recv(timeout=5))
