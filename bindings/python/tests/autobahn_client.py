"""Autobahn TestSuite client driver for weft's Python clients.

usage: python autobahn_client.py URL AGENT --mode sync|async [--uvloop] [--no-deflate]

Used as the client command of ../shared/tools/autobahn/run-client-suite.sh: asks the
fuzzingserver for the case count, runs every case echoing each message back, then asks for the
reports. Offers permessage-deflate unless --no-deflate.
"""

import argparse
import asyncio
import sys

from weft import async_client, sync_client
from weft.exceptions import ConnectionClosed

OPTIONS = dict(max_size=None, connect_timeout=30.0, receive_timeout=60.0)


def run_sync(url: str, agent: str, deflate: bool) -> None:
    with sync_client.connect(f"{url}/getCaseCount") as ws:
        count = int(ws.recv())
    for case in range(1, count + 1):
        try:
            ws = sync_client.connect(f"{url}/runCase?case={case}&agent={agent}", compression=deflate, **OPTIONS)
        except Exception as e:  # noqa: BLE001 - a refused case is the suite's to judge
            print(f"case {case}: {e!r}", file=sys.stderr)
            continue
        try:
            while True:
                ws.send(ws.recv())
        except ConnectionClosed:
            pass
        except Exception as e:  # noqa: BLE001
            print(f"case {case}: {e!r}", file=sys.stderr)
        finally:
            ws.close()
    with sync_client.connect(f"{url}/updateReports?agent={agent}") as ws:
        try:
            ws.recv()
        except ConnectionClosed:
            pass


async def run_async(url: str, agent: str, deflate: bool) -> None:
    async with async_client.connect(f"{url}/getCaseCount") as ws:
        count = int(await ws.recv())
    for case in range(1, count + 1):
        try:
            ws = await async_client.connect(
                f"{url}/runCase?case={case}&agent={agent}", compression=deflate, **OPTIONS
            )
        except Exception as e:  # noqa: BLE001
            print(f"case {case}: {e!r}", file=sys.stderr)
            continue
        try:
            while True:
                await ws.send(await ws.recv())
        except ConnectionClosed:
            pass
        except Exception as e:  # noqa: BLE001
            print(f"case {case}: {e!r}", file=sys.stderr)
        finally:
            await ws.close()
    async with async_client.connect(f"{url}/updateReports?agent={agent}") as ws:
        try:
            await ws.recv()
        except ConnectionClosed:
            pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("agent")
    ap.add_argument("--mode", choices=["sync", "async"], required=True)
    ap.add_argument("--uvloop", action="store_true")
    ap.add_argument("--no-deflate", action="store_true")
    a = ap.parse_args()
    if a.mode == "sync":
        run_sync(a.url, a.agent, not a.no_deflate)
    else:
        if a.uvloop:
            import uvloop

            uvloop.install()
        asyncio.run(run_async(a.url, a.agent, not a.no_deflate))


if __name__ == "__main__":
    main()
