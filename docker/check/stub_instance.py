"""A stand-in for one TeachBack instance, for docker/check/run.sh (no Rust build needed).

Serves the routes the proxy treats specially and answers with what reached it (instance name,
X-Forwarded-For, X-Forwarded-Proto, Connection), so proxy_test.py can check the proxy's work:
WebSocket upgrades and binary frames, unbuffered server-sent events, streamed uploads.
`/readyz` answers 200, or 503 with a readiness problem when started with `--not-ready`.

    python3 stub_instance.py NAME PORT [--not-ready]
"""

import asyncio
import sys

from aiohttp import web

NAME, PORT = sys.argv[1], int(sys.argv[2])
READY = "--not-ready" not in sys.argv


def seen(request):
    return {
        "instance": NAME,
        "xff": request.headers.get("X-Forwarded-For"),
        "proto": request.headers.get("X-Forwarded-Proto"),
        "connection": request.headers.get("Connection"),
    }


async def websocket(request):
    sock = web.WebSocketResponse(heartbeat=None)
    await sock.prepare(request)
    await sock.send_json(seen(request))
    async for msg in sock:
        if msg.type == web.WSMsgType.BINARY:
            await sock.send_json({"ack": len(msg.data)})
        elif msg.type == web.WSMsgType.TEXT:
            await sock.send_str(msg.data)
    return sock


async def events(request):
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(5):
        await resp.write(f"data: {NAME} {i}\n\n".encode())
        await asyncio.sleep(0.4)
    return resp


async def upload(request):
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
    return web.json_response({"bytes": size, **seen(request)})


async def readyz(request):
    if READY:
        return web.json_response({"status": "ready"})
    body = {"status": "not_ready", "problems": ["projection learning.v1@UTC is 5000 events behind"]}
    return web.json_response(body, status=503)


async def anything(request):
    return web.json_response(seen(request))


app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_get("/api/v1/live", websocket)
app.router.add_get("/api/v1/lectures/{id}/watch", websocket)
app.router.add_get("/api/v1/lectures/{id}/events", events)
app.router.add_get("/api/v1/rankings/live", events)
app.router.add_put("/api/v1/uploads/{id}", upload)
app.router.add_get("/readyz", readyz)
app.router.add_route("*", "/{tail:.*}", anything)
web.run_app(app, host="127.0.0.1", port=PORT, print=None)
