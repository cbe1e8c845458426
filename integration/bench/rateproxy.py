#!/usr/bin/env python3
"""A TCP proxy that limits the bandwidth towards the client (a shared token bucket, like one
network link) and counts the bytes it passed: rateproxy.py LISTEN_PORT TARGET_HOST:PORT MBIT STATS_FILE.
STATS_FILE holds the total bytes sent to clients, rewritten twice a second; a latency in ms can be
added per request with RTT_MS in the environment."""
import asyncio, os, sys, time

listen, target, mbit, stats = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
rate = mbit * 1e6 / 8  # bytes per second
rtt = float(os.environ.get("RTT_MS", "0")) / 1000
thost, tport = target.rsplit(":", 1)
total = 0
bucket = {"t": time.monotonic(), "tokens": 0.0}
lock = asyncio.Lock()


async def take(n):
    async with lock:  # one link: clients share it
        while True:
            now = time.monotonic()
            bucket["tokens"] = min(rate * 0.05, bucket["tokens"] + (now - bucket["t"]) * rate)
            bucket["t"] = now
            if bucket["tokens"] >= n:
                bucket["tokens"] -= n
                return
            await asyncio.sleep((n - bucket["tokens"]) / rate)


async def pipe(r, w, limited):
    global total
    try:
        while True:
            data = await r.read(16384)
            if not data:
                break
            if limited:
                await take(len(data))
                total += len(data)
            elif rtt:
                await asyncio.sleep(rtt)
            w.write(data)
            await w.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            w.close()
        except Exception:
            pass


async def handle(cr, cw):
    try:
        sr, sw = await asyncio.open_connection(thost, int(tport))
    except OSError:
        cw.close()
        return
    await asyncio.gather(pipe(cr, sw, False), pipe(sr, cw, True))


async def report():
    while True:
        with open(stats + ".tmp", "w") as f:
            f.write(str(total))
        os.replace(stats + ".tmp", stats)
        await asyncio.sleep(0.5)


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    asyncio.create_task(report())
    async with server:
        await server.serve_forever()


asyncio.run(main())
