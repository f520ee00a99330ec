"""Checks docker/nginx/nginx.conf's behaviour against two stub instances (stub_instance.py).

    python3 proxy_test.py BASE_URL all [IDLE_SECONDS]   # both stubs up
    python3 proxy_test.py BASE_URL failover HOME       # HOME, the live socket's stub, stopped
    python3 proxy_test.py BASE_URL recovered HOME      # HOME back, past nginx's fail_timeout

The stubs only tell which instance a request reached: they do not implement TeachBack's
lecture hand-over. So these checks show where nginx sends each connection, not that a lecture
resumes there (tests/it/instances.rs tests the hand-over between two real instances).

Prints PASS/FAIL per check and a closing `N passed, N failed` line; exits non-zero on a failure.
"""

import asyncio
import sys
import time

import aiohttp

BASE = sys.argv[1].rstrip("/")
PHASE = sys.argv[2]
IDLE = float(sys.argv[3]) if PHASE == "all" and len(sys.argv) > 3 else 65.0
HOME = sys.argv[3] if PHASE != "all" else None
TOKEN = "tok-proxy-test-secret"
results = []


def check(name, ok, detail=""):
    results.append(bool(ok))
    print("PASS" if ok else "FAIL", name, detail if not ok else "")


async def all_checks(s):
    async with s.get(f"{BASE}/api/v1/me?token={TOKEN}") as r:
        seen = await r.json()
        check("REST is proxied", r.status == 200, r.status)
        check("X-Forwarded-For is the client's address", seen["xff"] == "127.0.0.1", seen)
        check("X-Forwarded-Proto is set", seen["proto"] == "http", seen)
    async with s.get(f"{BASE}/api/v1/me", headers={"X-Forwarded-For": "6.6.6.6"}) as r:
        seen = await r.json()
        check("a forged X-Forwarded-For stays left of the real address",
              seen["xff"] == "6.6.6.6, 127.0.0.1", seen)
    instances = set()
    for _ in range(6):
        async with s.get(f"{BASE}/api/v1/catalog") as r:
            instances.add((await r.json())["instance"])
    check("REST reaches both instances", instances == {"a", "b"}, instances)

    async with s.ws_connect(f"{BASE}/api/v1/live?token={TOKEN}") as ws:
        hello = await ws.receive_json()
        check("the live WebSocket is upgraded", hello["instance"] in ("a", "b"), hello)
        check("the live WebSocket carries X-Forwarded-For", hello["xff"] == "127.0.0.1", hello)
        home = hello["instance"]
        await ws.send_bytes(b"\0" * 3200)
        ack = await ws.receive_json()
        check("a 3,200-byte audio frame goes through", ack == {"ack": 3200}, ack)
        await asyncio.sleep(IDLE)
        await ws.send_str('{"type":"ping"}')
        msg = await ws.receive(timeout=5)
        check(f"the live socket survives {IDLE:.0f} s idle", msg.type == aiohttp.WSMsgType.TEXT, msg.type)
    for _ in range(3):
        async with s.ws_connect(f"{BASE}/api/v1/live?token={TOKEN}") as ws:
            again = (await ws.receive_json())["instance"]
            check("the same client address reaches the same instance", again == home, again)
    async with s.ws_connect(f"{BASE}/api/v1/lectures/x/watch?token={TOKEN}") as ws:
        check("the watch WebSocket is upgraded, on the same instance",
              (await ws.receive_json())["instance"] == home)
    for path in ("/api/v1/lectures/x/events", "/api/v1/rankings/live"):
        start = time.monotonic()
        async with s.get(f"{BASE}{path}?token={TOKEN}") as r:
            first = await r.content.readline()
            took = time.monotonic() - start
            await r.read()
            check(f"{path}: the first event arrives before the stream ends",
                  first.startswith(b"data:") and took < 0.5, f"{took * 1000:.0f} ms {first!r}")
    body = b"\1" * (20 * 1024 * 1024)
    async with s.put(f"{BASE}/api/v1/uploads/x?sig=s", data=body) as r:
        check("a 20 MiB upload goes through", r.status == 200 and (await r.json())["bytes"] == len(body), r.status)
    async with s.put(f"{BASE}/api/v1/uploads/x", data=b"\1" * (40 * 1024 * 1024)) as r:
        check("a 40 MiB upload is refused (413)", r.status == 413, r.status)
    for path, want in (("/metrics", 404), ("/readyz", 404), ("/proxy-health", 200)):
        async with s.get(f"{BASE}{path}") as r:
            check(f"{path} answers {want} at the proxy", r.status == want, r.status)
    print("LIVE_INSTANCE", home)


async def first_frame(s, path):
    async with s.ws_connect(f"{BASE}{path}?token={TOKEN}") as ws:
        return (await ws.receive_json())["instance"]


async def failover_checks(s):
    other = "b" if HOME == "a" else "a"
    ok = 0
    for _ in range(6):
        async with s.get(f"{BASE}/api/v1/catalog") as r:
            ok += r.status == 200
    check("REST is served by the other instance", ok == 6, f"{ok}/6")
    # The first attempt finds HOME refusing connections and moves on; later ones skip HOME
    # for fail_timeout. Every one must reach the survivor.
    for attempt in range(3):
        start = time.monotonic()
        try:
            seen = await first_frame(s, "/api/v1/live")
        except aiohttp.WSServerHandshakeError as e:
            seen = f"handshake {e.status}"
        took = time.monotonic() - start
        check(f"the live socket moves to the other instance (attempt {attempt + 1}, {took * 1000:.0f} ms)",
              seen == other, seen)
    check("the watch socket moves to the other instance",
          await first_frame(s, "/api/v1/lectures/x/watch") == other)
    async with s.get(f"{BASE}/api/v1/lectures/x/events?token={TOKEN}") as r:
        first = await r.content.readline()
        await r.read()
        check("the lecture's event stream moves to the other instance",
              r.status == 200 and first.startswith(f"data: {other} ".encode()), f"{r.status} {first!r}")


async def recovered_checks(s):
    seen = [await first_frame(s, "/api/v1/live") for _ in range(3)]
    check("once its instance is back, the live socket returns to it (affinity)",
          seen == [HOME] * 3, seen)


async def main():
    async with aiohttp.ClientSession() as s:
        phases = {"all": all_checks, "failover": failover_checks, "recovered": recovered_checks}
        await phases[PHASE](s)
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


asyncio.run(main())
