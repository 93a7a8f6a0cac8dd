"""Load on a router's OpenAI-compatible API: N concurrent requests, half of
them streamed, each on its own connection (standard library only).

Every request must be served (200, a stream ending with `data: [DONE]`) or
refused with 429 or 503 carrying `Retry-After`; the processes named with
--pid must stay alive, their peak RSS is printed; afterwards one ordinary
request must be served again. Exits 1 when any of that fails.

    python3 scripts/load_test.py --api http://127.0.0.1:PORT --key sk-... \
        --pid router=123 --pid orchestrator-1=456 [--requests 500] [--tokens 16]
"""

import argparse
import asyncio
import json
import os
import sys
import time


def rss_kib(pid, field):
    """VmRSS or VmHWM of `pid` in KiB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


async def request(host, port, key, body, timeout):
    """One POST /v1/completions; returns (status, headers, body bytes)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        payload = json.dumps(body).encode()
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode()
        writer.write(head + payload)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body_bytes, data = b"", rest
        while data:
            size, _, data = data.partition(b"\r\n")
            n = int(size.strip() or b"0", 16)
            if n == 0:
                break
            body_bytes += data[:n]
            data = data[n + 2 :]
        rest = body_bytes
    return status, headers, rest


def judge(i, stream, status, headers, body):
    """None when the answer is acceptable, else why not."""
    if status == 200:
        if stream:
            if b"data: [DONE]" not in body:
                return f"request {i}: a 200 stream without data: [DONE]"
        else:
            try:
                answer = json.loads(body)
                answer["choices"][0]["text"]
            except (ValueError, KeyError, IndexError):
                return f"request {i}: a 200 without a completion: {body[:200]!r}"
        return None
    if status in (429, 503):
        if "retry-after" not in headers:
            return f"request {i}: {status} without Retry-After"
        return None
    return f"request {i}: status {status}: {body[:200]!r}"


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--pid", action="append", default=[], help="NAME=PID to watch")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    host, port = args.api.removeprefix("http://").rstrip("/").split(":")
    port = int(port)
    pids = dict(p.split("=", 1) for p in args.pid)
    peak = {name: 0 for name in pids}
    before = {name: rss_kib(pid, "VmRSS") for name, pid in pids.items()}

    done = asyncio.Event()

    async def watch():
        while not done.is_set():
            for name, pid in pids.items():
                r = rss_kib(pid, "VmRSS")
                if r is not None:
                    peak[name] = max(peak[name], r)
            try:
                await asyncio.wait_for(done.wait(), 0.1)
            except asyncio.TimeoutError:
                pass

    async def one(i):
        stream = i % 2 == 0
        body = {
            "prompt": f"Request {i}. Write a sentence about the desert.",
            "max_tokens": args.tokens,
            "temperature": 0.0,
            "stream": stream,
        }
        started = time.monotonic()
        try:
            status, headers, answer = await request(host, port, args.key, body, args.timeout)
        except (OSError, asyncio.TimeoutError, ValueError, IndexError) as e:
            return stream, None, f"request {i}: {type(e).__name__}: {e}", 0.0
        why = judge(i, stream, status, headers, answer)
        return stream, status, why, time.monotonic() - started

    watcher = asyncio.create_task(watch())
    started = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(args.requests)))
    wall = time.monotonic() - started
    done.set()
    await watcher

    counts = {}
    problems = []
    slowest = 0.0
    for stream, status, why, took in results:
        k = (("stream" if stream else "whole"), status)
        counts[k] = counts.get(k, 0) + 1
        slowest = max(slowest, took)
        if why:
            problems.append(why)
    print(f"{args.requests} concurrent requests ({args.tokens} tokens each, half streamed) in {wall:.1f} s, slowest {slowest:.1f} s")
    print("| kind | status | requests |")
    print("|---|---|---|")
    for (kind, status), n in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        print(f"| {kind} | {status if status is not None else 'no answer'} | {n} |")

    print("| process | RSS before (MiB) | peak RSS during the load (MiB) | VmHWM (MiB) | alive |")
    print("|---|---|---|---|---|")
    for name, pid in pids.items():
        alive = os.path.exists(f"/proc/{pid}")
        hwm = rss_kib(pid, "VmHWM")
        b = before[name]
        print(
            f"| {name} | {b / 1024 if b else 0:.0f} | {peak[name] / 1024:.0f} | "
            f"{hwm / 1024 if hwm else 0:.0f} | {'yes' if alive else 'NO'} |"
        )
        if not alive:
            problems.append(f"{name} (pid {pid}) died")

    # The cluster serves normally again.
    _, status, why, took = await one(args.requests + 1)
    if status != 200 or why:
        problems.append(f"after the load: {why or status}")
    else:
        print(f"after the load, one request: 200 in {took:.2f} s")

    served = sum(n for (_, s), n in counts.items() if s == 200)
    print(f"served {served}, refused {sum(n for (_, s), n in counts.items() if s in (429, 503))}, problems {len(problems)}")
    for p in problems[:20]:
        print("problem:", p, file=sys.stderr)
    if problems or served == 0:
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
