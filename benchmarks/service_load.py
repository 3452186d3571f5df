"""Load benchmark for `xdai serve` on loopback: idle-connection memory, server overhead under chat load, throughput.

    .venv/bin/python benchmarks/service_load.py [--idle 1000] [--clients 20] [--seconds 60]

It starts `xdai serve` (the default bot, the real default model) on a free loopback port with a temporary session
store, then measures, all in one run so that the figures compare:
  1. resident memory per idle connection: server RSS before and after opening `--idle` connections, each with an
     open session (target <= 100 KB);
  2. one sequential client chatting for `--seconds`: replies per minute (the baseline);
  3. `--clients` concurrent clients chatting for `--seconds`: replies per minute (target >= 2.5x the sequential
     client's), first-token latency p50/p90 next to the sequential client's (and its turn-3+ p50), the engine's
     prefix hit rate from /metrics, and the server's own overhead
     excluding generation — message.create -> message.ack, and a piece leaving the model worker -> its delta on the
     socket — as p50/p99 from the server's /metrics (exact quantiles over recent observations; target p99 <= 20 ms),
     beside the client-observed ack latency.
Every phase is bounded in time; the server is stopped at the end whatever happens. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tqdm import tqdm

from xdai.client import Client
from xdai.service.metrics import parse

QUESTIONS = ["谷爱凌是谁？", "故宫有多少年历史？", "你喜欢什么运动？", "清华大学在哪里？", "北京冬奥会是哪一年？",
             "苏翊鸣是谁？", "颐和园在哪里？", "你今天过得怎么样？"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return parse(r.read().decode())


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    data = sorted(values)
    return data[min(int(q * len(data)), len(data) - 1)]


async def wait_up(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.3)
    raise TimeoutError("the server did not start in time")


async def chat_loop(url: str, until: float, acks: list[float], replies: list[float], offset: int,
                    forward_ms: list[float], first: list[tuple[int, float]] | None = None) -> None:
    """Chat until `until`; a reply started before the deadline is finished and counted."""
    def on_frame(frame: dict) -> None:
        if frame["type"] == "response.delta":
            forward_ms.append(time.time() * 1000.0 - frame["ts"])

    c = await Client.connect(url, on_frame=on_frame)
    await c.open("xiaodai")
    i = offset
    while time.monotonic() < until:
        result = await c.chat(QUESTIONS[i % len(QUESTIONS)], timeout=300)
        i += 1
        if result.ack_s is not None:
            acks.append(result.ack_s * 1000.0)
        if first is not None and result.first_delta_s is not None:
            first.append((i - offset, result.first_delta_s))  # (turn index in this session, seconds)
        if result.end is not None and result.end["finish_reason"] in ("stop", "length"):
            replies.append(time.monotonic())
        elif result.errors:
            await asyncio.sleep((result.errors[0].get("retry_after_ms") or 500) / 1000.0)
    await c.close()


async def run(args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="xdai-bench-"))
    env = {**os.environ, "XDAI_SERVER_SQLITE_PATH": str(tmp / "sessions.sqlite3"),
           "XDAI_SERVER_MAX_CONNECTIONS_PER_IP": str(args.idle + 100), "XDAI_SERVER_RATE_LIMIT_PER_S": "1000",
           "XDAI_SERVER_IP_RATE_LIMIT_PER_S": "100000", "XDAI_SERVER_QUEUE_SIZE": str(max(args.clients * 2, 32)),
           "XDAI_SERVER_INSTANCE_ID": "bench", "XDAI_SERVER_MAX_TURNS_PER_IP": "0",  # every client is on loopback
           "XDAI_SERVER_IP_SESSION_RATE_PER_S": "100000", "XDAI_SERVER_IP_SESSION_BURST": str(args.idle + 1000)}
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "xdai", "serve", "--port", str(port)], env=env, stdout=log,
                            stderr=log)
    url = f"ws://127.0.0.1:{port}/ws"
    out: dict[str, float] = {}
    try:
        await wait_up(port, proc, time.monotonic() + args.startup_timeout)
        warm = await Client.connect(url)
        await warm.open("xiaodai")
        await warm.chat("你好", timeout=300)  # load everything before measuring
        await warm.close()

        # 1. idle connections
        base = rss_kb(proc.pid)
        idle: list[Client] = []
        for _ in tqdm(range(args.idle), desc="idle connections", file=sys.stderr):
            c = await Client.connect(url)
            await c.open("xiaodai")
            idle.append(c)
        await asyncio.sleep(2.0)
        loaded = rss_kb(proc.pid)
        out["idle_connections"] = len(idle)
        out["rss_base_mb"] = base / 1024
        out["rss_per_connection_kb"] = (loaded - base) / max(len(idle), 1)
        await asyncio.gather(*(c.close() for c in idle))

        # 2. one sequential client (the baseline)
        acks_seq: list[float] = []
        done_seq: list[float] = []
        first_seq: list[tuple[int, float]] = []
        started = time.monotonic()
        await chat_loop(url, started + args.seconds, acks_seq, done_seq, 0, [], first_seq)
        out["sequential_replies"] = len(done_seq)
        out["sequential_replies_per_min"] = len(done_seq) / ((time.monotonic() - started) / 60.0)
        out["sequential_first_token_p50_s"] = pct([t for _, t in first_seq], 0.5)
        out["sequential_first_token_p90_s"] = pct([t for _, t in first_seq], 0.9)
        out["turn3_first_token_p50_s"] = pct([t for n, t in first_seq if n >= 2], 0.5)  # turn 3 and later

        # 3. concurrent clients
        before = metrics(port)
        acks: list[float] = []
        done: list[float] = []
        forward: list[float] = []
        first: list[tuple[int, float]] = []
        started = time.monotonic()
        await asyncio.gather(*(chat_loop(url, started + args.seconds, acks, done, i, forward, first)
                               for i in range(args.clients)))
        elapsed = time.monotonic() - started
        after = metrics(port)
        out["concurrent_clients"] = args.clients
        out["concurrent_replies"] = len(done)
        out["concurrent_replies_per_min"] = len(done) / (elapsed / 60.0)
        out["throughput_ratio"] = out["concurrent_replies_per_min"] / max(out["sequential_replies_per_min"], 1e-9)
        out["concurrent_first_token_p50_s"] = pct([t for _, t in first], 0.5)
        out["concurrent_first_token_p90_s"] = pct([t for _, t in first], 0.9)
        out["prefix_hit_rate"] = after.get("xdai_prefix_hit_rate", float("nan"))
        out["client_ack_p50_ms"] = pct(acks, 0.5)
        out["client_ack_p99_ms"] = pct(acks, 0.99)
        out["client_delta_latency_p50_ms"] = pct(forward, 0.5)
        out["client_delta_latency_p99_ms"] = pct(forward, 0.99)
        for name, key in (("ack", "xdai_ack_latency_seconds"), ("delta_forward", "xdai_delta_forward_seconds")):
            out[f"server_{name}_p50_ms"] = after[f'{key}{{quantile="0.5"}}'] * 1000.0
            out[f"server_{name}_p99_ms"] = after[f'{key}{{quantile="0.99"}}'] * 1000.0
        out["server_errors_busy"] = after.get('xdai_errors_total{code="busy"}', 0) - before.get(
            'xdai_errors_total{code="busy"}', 0)
        replies_n = after.get("xdai_reply_seconds_count", 0) - before.get("xdai_reply_seconds_count", 0)
        replies_s = after.get("xdai_reply_seconds_sum", 0) - before.get("xdai_reply_seconds_sum", 0)
        out["mean_reply_s"] = replies_s / max(replies_n, 1)
        out["load_average_1min"] = os.getloadavg()[0]  # latency figures mean little on a crowded machine
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle", type=int, default=1000, help="idle connections to open")
    ap.add_argument("--clients", type=int, default=20, help="concurrent chatting clients")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each chat phase")
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--json", type=str, default=None, help="also write the figures to this file")
    args = ap.parse_args()
    figures = asyncio.run(asyncio.wait_for(run(args), timeout=args.startup_timeout + 4 * args.seconds + 900))
    for key, value in figures.items():
        print(f"{key:32s} {value:10.3f}" if isinstance(value, float) else f"{key:32s} {value:10d}")
    print(f"(session store: sqlite, synchronous={os.environ.get('XDAI_SERVER_SQLITE_SYNCHRONOUS', 'FULL')})")
    print(f"service_load: {figures['idle_connections']:.0f} idle connections at "
          f"{figures['rss_per_connection_kb']:.1f} KB each; {args.clients} clients: ack p99 "
          f"{figures['server_ack_p99_ms']:.2f} ms, delta forward p99 {figures['server_delta_forward_p99_ms']:.2f} ms "
          f"(server side); {figures['concurrent_replies_per_min']:.1f} replies/min vs "
          f"{figures['sequential_replies_per_min']:.1f} sequential (x{figures['throughput_ratio']:.2f}, target >= 2.5); "
          f"first token p50/p90 {figures['concurrent_first_token_p50_s']:.2f}/"
          f"{figures['concurrent_first_token_p90_s']:.2f} s vs {figures['sequential_first_token_p50_s']:.2f}/"
          f"{figures['sequential_first_token_p90_s']:.2f} s alone (turn 3+ alone: "
          f"{figures['turn3_first_token_p50_s']:.2f} s); prefix hit rate {figures['prefix_hit_rate']:.2f}; "
          f"load {figures['load_average_1min']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
