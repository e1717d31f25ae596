"""Load: many concurrent streaming clients against a real `nanoseek serve` of the shipped model, a
quarter of them hanging up mid-stream, as a browser tab closed during an answer does.

The server is bench_serve.py's: `python -m nanoseek serve` in a subprocess on a free loopback port
(here on the model nanoseek ships, src/nanoseek/assets/model, or --checkpoint). Per concurrency
level C, C asyncio clients on one httpx.AsyncClient each send --rounds streamed chat completions,
one after another (a closed loop: C requests in flight), each asking a question the shipped model
is trained for, at R1's temperature 0.6. Every fourth request hangs up after its first few text
chunks (--hangup-after). Reported per level:

  TTFT        send -> first chunk carrying text (reasoning or answer); p50 / p90 / p99
  ITL         gaps between consecutive text chunks, all requests pooled; p50 / p90 / p99
  throughput  the server's own generated tokens (its nanoseek_completion_tokens counter, so hung-up
              requests count what was generated for them) / the level's wall time
  statuses    HTTP status of every request: any 5xx, and any error of a request that did not hang
              up, is a failure
  RSS         the server's resident memory (psutil, else /proc) before the first level and after
              the last
  stuck       after each level, running + waiting requests the server still holds once it has had
              up to --settle seconds to notice the hang-ups (must be 0)

    python bench/bench_load.py                        # 32 and 64 clients, under a minute
    python bench/bench_load.py --concurrency 8 --rounds 2 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

import httpx
from bench_serve import Server, metric_delta, pct

from nanoseek.files import atomic_write
from nanoseek.infer.bundled import BUNDLED

# asked the ways the shipped model was taught (its skills), so its answers are as long as in use
QUESTIONS = ["What is {a} + {b}?", "Calculate {a} - {b}.", "what's {a} times {b}",
             "Which is larger, {a} or {b}?", "Sort {a}, {b}, {c}", "How much is {a} plus {b}?"]


def question(rng: random.Random) -> str:
    return rng.choice(QUESTIONS).format(a=rng.randint(1, 99), b=rng.randint(1, 99),
                                        c=rng.randint(1, 99))


async def one_request(client: httpx.AsyncClient, url: str, text: str, max_tokens: int,
                      hangup_after: int | None) -> dict:
    """A streamed chat completion; hangup_after: close the connection after that many text
    chunks. Returns its status, text-chunk arrival times and error."""
    body = {"model": "nanoseek", "messages": [{"role": "user", "content": text}], "stream": True,
            "max_tokens": max_tokens, "temperature": 0.6, "top_p": 0.95}
    out = {"start": time.perf_counter(), "chunks": [], "status": None, "error": None,
           "hung_up": False, "hangup": hangup_after is not None}
    try:
        async with client.stream("POST", url, json=body) as r:
            out["status"] = r.status_code
            if r.status_code != 200:
                out["error"] = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return out
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    break
                obj = json.loads(line[6:])
                if "error" in obj:
                    out["error"] = str(obj["error"])
                    break
                delta = (obj.get("choices") or [{}])[0].get("delta") or {}
                if delta.get("content") or delta.get("reasoning_content"):
                    out["chunks"].append(time.perf_counter())
                    if hangup_after is not None and len(out["chunks"]) >= hangup_after:
                        out["hung_up"] = True
                        break  # leaving the block closes the connection mid-stream
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def rss_mb(pid: int) -> float:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:  # Linux without psutil
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc") from None


async def run_level(server: Server, concurrency: int, args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed + concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0)
    results: list[dict] = []
    before = server.metrics()
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout), limits=limits) as client:
        url = server.base + "/v1/chat/completions"

        async def client_loop(k: int) -> None:
            for i in range(args.rounds):
                hangup = args.hangup_after if (k * args.rounds + i) % 4 == 3 else None
                results.append(await one_request(client, url, question(rng), args.max_tokens,
                                                 hangup))

        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    await asyncio.to_thread(server.wait_idle, args.settle)  # the server notices the hang-ups
    health = httpx.get(server.base + "/health", timeout=10).json()
    after = server.metrics()
    ttft = [r["chunks"][0] - r["start"] for r in results if r["chunks"]]
    itl = [b - a for r in results for a, b in zip(r["chunks"], r["chunks"][1:])]
    tokens = metric_delta(before, after, "nanoseek_completion_tokens_total")
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    failed = [r for r in results if r["error"] and not r["hung_up"]]
    return {"concurrency": concurrency, "requests": len(results),
            "hangups_tried": sum(r["hangup"] for r in results),
            "hung_up": sum(r["hung_up"] for r in results), "statuses": statuses,
            "errors_5xx": sum(1 for r in results if (r["status"] or 0) >= 500),
            "failed": len(failed), "failed_examples": sorted({r["error"] for r in failed})[:3],
            "wall_s": wall, "server_tokens": tokens, "tokens_per_s": tokens / wall,
            "aborted_by_server": metric_delta(before, after, "nanoseek_aborted_requests_total"),
            "ttft_s": [pct(ttft, q) for q in (50, 90, 99)],
            "itl_s": [pct(itl, q) for q in (50, 90, 99)],
            "stuck": health.get("running", 0) + health.get("waiting", 0)}


def report(rec: dict) -> str:
    def ms(xs: list[float]) -> str:
        return " / ".join(f"{x * 1e3:.0f}" for x in xs)

    lines = [f"model {rec['checkpoint']}, max_tokens {rec['max_tokens']}, {rec['rounds']} requests "
             f"per client, every 4th hangs up after {rec['hangup_after']} text chunks; "
             f"load before: {rec['loadavg_before']}",
             "| clients | requests | hung up (of tries) | TTFT p50/p90/p99 ms | "
             "ITL p50/p90/p99 ms | server tokens/s | 5xx | failed | stuck after |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in rec["levels"]:
        lines.append(f"| {lv['concurrency']} | {lv['requests']} | "
                     f"{lv['hung_up']} ({lv['hangups_tried']}) | "
                     f"{ms(lv['ttft_s'])} | {ms(lv['itl_s'])} | {lv['tokens_per_s']:.0f} | "
                     f"{lv['errors_5xx']} | {lv['failed']} | {lv['stuck']} |")
    lines.append(f"server RSS: {rec['rss_before_mb']:.0f} MB before, {rec['rss_after_mb']:.0f} MB "
                 f"after")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--checkpoint", default=str(BUNDLED),
                    help="the model to serve (default: the one nanoseek ships)")
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                    default=[32, 64], help="levels, comma-separated (default 32,64)")
    ap.add_argument("--rounds", type=int, default=8, help="requests per client (default 8)")
    ap.add_argument("--max-tokens", type=int, default=64, help="default 64")
    ap.add_argument("--hangup-after", type=int, default=2,
                    help="text chunks a hanging-up client reads (default 2; an answer shorter than "
                         "that ends first)")
    ap.add_argument("--max-batch", type=int, default=32, help="server slots (default 32)")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds a level's requests have to end before those left are counted "
                         "as stuck (default 10)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per request")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="server torch threads (default: the CPUs this process may use)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    # what bench_serve's Server reads
    args.port, args.speculative, args.server_arg = None, None, []
    args.device = args.dtype = args.max_seq_len = None

    server = Server(Path(args.checkpoint), args)
    try:
        server.wait_ready()
        rec = {"checkpoint": args.checkpoint, "max_tokens": args.max_tokens,
               "rounds": args.rounds, "hangup_after": args.hangup_after,
               "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
               "rss_before_mb": rss_mb(server.proc.pid), "levels": []}
        for c in args.concurrency:
            print(f"{c} clients ...", file=sys.stderr, flush=True)
            rec["levels"].append(asyncio.run(run_level(server, c, args)))
        rec["rss_after_mb"] = rss_mb(server.proc.pid)
        rec["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    finally:
        server.stop()
    print(report(rec))
    if args.json:
        atomic_write(args.json, json.dumps(rec, indent=2) + "\n")
    bad = any(lv["errors_5xx"] or lv["failed"] or lv["stuck"] for lv in rec["levels"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
