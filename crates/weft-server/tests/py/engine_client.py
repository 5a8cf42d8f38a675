"""Drive a running weft engine with the Python `websockets` client.

usage: engine_client.py PORT TOKEN_OK TOKEN_EXPIRED

Exercises what a Python application would do: JWT in a header, subscribe, receive events
published by another client, publish, recover after a reconnect, and see the documented
refusals. Exits non-zero (with the failed assertion) on any difference.
"""
import asyncio
import json
import sys

import websockets
from websockets.exceptions import InvalidStatus

PORT, TOKEN, EXPIRED = int(sys.argv[1]), sys.argv[2], sys.argv[3]
URL = f"ws://127.0.0.1:{PORT}/ws"


def connect(token=TOKEN, proto="weft.v1.json"):
    return websockets.connect(URL, subprotocols=[proto], additional_headers={"Authorization": f"Bearer {token}"})


async def recv(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def main():
    # Refused tokens never get a WebSocket.
    try:
        async with connect(EXPIRED):
            raise AssertionError("expired token accepted")
    except InvalidStatus as e:
        assert e.response.status_code == 401, e.response.status_code
    try:
        async with connect("not-a-jwt"):
            raise AssertionError("garbage token accepted")
    except InvalidStatus as e:
        assert e.response.status_code == 401

    async with connect() as sub, connect() as pub:
        assert sub.subprotocol == "weft.v1.json"
        welcome = await recv(sub)
        assert welcome["type"] == "welcome" and welcome["user"] == "py-user", welcome
        await recv(pub)
        await sub.send(json.dumps({"type": "subscribe", "id": "s", "topics": ["py.room", "py.*"]}))
        r = await recv(sub)
        assert r["type"] == "subscribed" and r["id"] == "s", r
        assert [x["ok"] for x in r["results"]] == [True, True], r
        epoch = r["results"][0]["epoch"]
        for i in range(3):
            await pub.send(json.dumps({"type": "publish", "id": i, "topic": "py.room", "payload": {"i": i}}))
            ack = await recv(pub)
            assert ack["type"] == "published" and ack["id"] == i and ack["offset"] == i + 1, ack
        for i in range(3):
            ev = await recv(sub)
            assert ev["type"] == "event" and ev["offset"] == i + 1 and ev["payload"] == {"i": i}, ev
        last = 3
        await sub.send("this is not json")
        err = await recv(sub)
        assert err["type"] == "error" and err["code"] == 4000, err
        await sub.send(json.dumps({"type": "publish", "topic": "admin.x", "payload": 1}))
        err = await recv(sub)
        assert err["code"] == 4003, err

    # Missed events while away are replayed on resume.
    async with connect() as pub:
        await recv(pub)
        for i in range(3, 5):
            await pub.send(json.dumps({"type": "publish", "topic": "py.room", "payload": {"i": i}}))
            await recv(pub)
    async with connect() as sub:
        await recv(sub)
        await sub.send(json.dumps({"type": "subscribe", "id": 1, "topics": ["py.room"],
                                   "resume": {"py.room": {"offset": last, "epoch": epoch}}}))
        r = await recv(sub)
        assert r["results"][0]["recovered"] is True and r["results"][0]["replayed"] == 2, r
        got = [(await recv(sub))["offset"] for _ in range(2)]
        assert got == [4, 5], got
    print("python engine client: ok")


asyncio.run(main())
