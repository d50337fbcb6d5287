"""P3: the reward server against the same critic scored offline, and against one batch per request.

Three measurements of the tiny critic on the same one-edit item, in one run:
- offline: the critic loaded in this process, scoring batches of 1, 8, 16, 32, 64 items (one
  warm-up call first); the best items/s is the limit a server can approach;
- batched: `firm serve` (a real server process on loopback, continuous batching) with 32 concurrent
  clients each sending `--requests` one-item requests one after another, after one warm-up request;
- per-request: the same server started with `--no-cross-request-batching` (one batch per request,
  as FIRM's public Flask server scores), same load.
offline_ratio = batched items/s / best offline items/s (goal >= 0.8); throughput_ratio = batched /
per-request requests/s; p50_ms and p99_ms are the batched run's request latencies (goal p99 <= 2 x
p50). The critic answers with at most `--max-new-tokens` tokens (32: the shortest answers of the
tiny critic that still parse; the default 256 makes the per-request run take many minutes).
Last line: `P3 offline_ratio=<> throughput_ratio=<> p50_ms=<> p99_ms=<>`.

  python bench/reward_server.py [--clients 32] [--requests 4] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from serve_process import free_port, start_serve, wait_healthy  # noqa: E402  (tests/ is on the path now)


@dataclass(frozen=True)
class RunResult:
    label: str
    requests: int
    seconds: float
    latencies_ms: list[float]
    mean_batch_items: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_server(critic: Path, port: int, batched: bool, args: argparse.Namespace) -> subprocess.Popen:
    options = ["--max-batch", str(args.max_batch)]
    options += ["--max-new-tokens", str(args.max_new_tokens), "--queue-size", "1024", "--timeout-s", "3600"]
    if not batched:
        options.append("--no-cross-request-batching")
    return start_serve(critic, port, options, stderr=subprocess.PIPE)


async def load(base_url: str, body: dict, clients: int, requests: int) -> tuple[float, list[float]]:
    """Each client sends `requests` requests, the next as soon as the last is answered; the wall
    seconds until every client is done, and every request's latency."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=3600, limits=limits) as http:

        async def client() -> None:
            for _ in range(requests):
                sent = time.perf_counter()
                response = await http.post("/v1/edit", json=body)
                if response.status_code != 200:
                    raise SystemExit(f"request failed: {response.status_code} {response.text[:300]}")
                latencies.append((time.perf_counter() - sent) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - started, latencies


def mean_batch_items(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics").text
    total = float(re.search(r'firm_reward_batch_items_sum\{endpoint="edit"\} (\S+)', text).group(1))
    count = float(re.search(r'firm_reward_batch_items_count\{endpoint="edit"\} (\S+)', text).group(1))
    return total / count


def run(label: str, critic: Path, batched: bool, args: argparse.Namespace, body: dict) -> RunResult:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = start_server(critic, port, batched, args)
    try:
        wait_healthy(base_url, server, timeout_s=300)
        asyncio.run(load(base_url, body, 1, 1))  # warm-up: first-call costs stay out of the figures
        seconds, latencies = asyncio.run(load(base_url, body, args.clients, args.requests))
        return RunResult(label, len(latencies), seconds, latencies, mean_batch_items(base_url))
    finally:
        server.terminate()
        server.wait(60)


def offline(critic: Path, args: argparse.Namespace, item: dict) -> dict[int, float]:
    """Items/s of the critic in this process at each batch size, the same item repeated."""
    from firm_assets.critics.scoring import CriticScorer, EditQuery
    from firm_assets.serving.wire import ImageLimits, load_image, probe_image

    limits = ImageLimits(max_bytes=2**24, max_pixels=2**24)
    source, edited = (load_image(probe_image(item[k], limits), None) for k in ("source", "edited"))
    query = EditQuery(source, edited, item["instruction"])
    sizes = (1, 8, 16, 32, 64)
    scorer = CriticScorer.load(str(critic), max_new_tokens=args.max_new_tokens, batch_size=2 * max(sizes))
    scorer.score_edit([query])  # warm-up
    rates = {}
    for size in sizes:
        started = time.perf_counter()
        scorer.score_edit([query] * size)
        rates[size] = size / (time.perf_counter() - started)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    from firm_assets.serving.wire import encode_image
    from resources.tiny_models import VL_NAME, build_tiny_models

    source, edited = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")
    body = {
        "items": [
            {"source": encode_image(source), "edited": encode_image(edited), "instruction": "make it blue"}
        ]
    }
    with tempfile.TemporaryDirectory() as tmp:
        critic = build_tiny_models(Path(tmp))[VL_NAME]
        rates = offline(critic, args, body["items"][0])
        results = [
            run("batched", critic, True, args, body),
            run("per-request", critic, False, args, body),
        ]
    print("offline items/s by batch size: " + " ".join(f"{n}:{r:.2f}" for n, r in rates.items()))
    best = max(rates, key=rates.get)
    columns = ("requests", "seconds", "req/s", "p50_ms", "p99_ms", "batch_items")
    print(f"{'server':<12} " + " ".join(f"{column:>11}" for column in columns))
    for r in results:
        print(
            f"{r.label:<12} {r.requests:>11} {r.seconds:>11.1f} {r.throughput:>11.2f} "
            f"{r.percentile(0.5):>11.0f} {r.percentile(0.99):>11.0f} {r.mean_batch_items:>11.1f}"
        )
    print(
        f"clients={args.clients} requests_per_client={args.requests} max_batch={args.max_batch} "
        f"max_new_tokens={args.max_new_tokens} offline_best_batch={best} (batch_items: mean over the run, "
        "warm-up included; one item a request, so req/s is items/s)"
    )
    batched, per_request = results
    ratio = batched.throughput / per_request.throughput
    offline_ratio = batched.throughput / rates[best]
    p50, p99 = batched.percentile(0.5), batched.percentile(0.99)
    print(
        f"P3 offline_ratio={offline_ratio:.2f} throughput_ratio={ratio:.2f} p50_ms={p50:.0f} p99_ms={p99:.0f}"
    )


if __name__ == "__main__":
    main()
