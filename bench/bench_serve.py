"""Serving: a load generator against a real `nanoseek serve`, streaming over HTTP at several
concurrencies.

The server is a subprocess (`python -m nanoseek serve CHECKPOINT`) on a free loopback port, with its
chat app's conversations in a temporary SQLite file; it is stopped at the end, also on Ctrl-C. The
checkpoint is bench_infer.py's cpu-small, trained on R1-style arithmetic chats and cached in
bench/.cache/cpu-small-chat (built by bench_infer's own function, with its default settings, so
both scripts share it), or --checkpoint.

Clients are asyncio tasks on one httpx.AsyncClient, each sending POST /v1/chat/completions with
stream=true, max_tokens=M, ignore_eos=true, temperature 0 and stream_options.include_usage, one
request after another (a closed loop: C clients keep C requests in flight). Every request has its
own question (reasoning-gym basic_arithmetic, a fixed seed), so every request produces exactly M
tokens. The SSE chunks are parsed as they arrive; per concurrency level C:
  TTFT        send -> the first chunk carrying text (the role chunk the server sends before prefill
              is not a token); p50 / p90 over requests
  TPOT        (last token's arrival - first token's) / (completion_tokens - 1), per request;
              mean / p50
  ITL         gaps between consecutive text chunks, all requests pooled; p50 / p90 / p99. A chunk
              is one engine step's text for a request: with MTP speculation a step can bring 2
              tokens, and a token without text (</think>, EOS under ignore_eos) brings none, so
              "tokens / chunk" is shown
  throughput  completion tokens of the level / its wall time (first send to last [DONE]); requests/s
Beside them, from the server's /metrics (scraped before and after each level): its own mean TTFT and
TPOT, and the CPU time the server and this client process used (from /proc), in cores.

Prefix cache: `nanoseek serve` always keeps a prompt-prefix KV cache in memory
(cli.common.engine_from builds a PrefixCache() unless --prefix-cache-dir puts it on disk too;
32-token blocks). A long system prompt (worked examples, --system-tokens) + short distinct
questions, one request at a time: the first request with that system prompt is cold, the next ones
find its full blocks cached (usage.prompt_cache_hit_tokens). Repeated with --prefix-repeats system
prompts that differ from their first token; median TTFTs.

Cost: $ per million output tokens = usd_per_hour / (tokens/s x 3600) x 1e6 at the best-throughput
level, beside DeepSeek's R1 API list price of $2.19 per million output tokens. The default
--usd-per-hour is an ASSUMPTION for a 2-vCPU CPU machine (AWS EC2 c7i.large on-demand, us-east-1,
Linux: $0.08925/h); pass the price of the machine you measure on.

    python bench/bench_serve.py                         # full run, about 2 minutes on 2 vCPUs
    python bench/bench_serve.py --concurrency 1,4 --requests 4 --max-tokens 32 --prefix-repeats 1 \\
        --prefix-warm 2 --warmup 1                      # smoke run, about 10 s
    python bench/bench_serve.py --checkpoint DIR --usd-per-hour 2.99 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

# DeepSeek-R1 (deepseek-reasoner) API list price, per million output tokens
DEEPSEEK_USD_PER_M_OUTPUT = 2.19
# assumed: AWS EC2 c7i.large (2 vCPU, 4 GiB) on-demand, us-east-1, Linux
DEFAULT_USD_PER_HOUR = 0.08925
DEFAULT_PRICE_NOTE = "assumed: AWS EC2 c7i.large (2 vCPU) on-demand list price, us-east-1, Linux"
# bench_infer.py's default training settings: the same spec, so the same cached checkpoint
INFER_SPEC = {"docs": 4000, "vocab": 4096, "steps": 300, "seq": 256, "batch": 8}


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`nanoseek serve` in a subprocess; its output goes to a log file in a temporary directory
    (printed if it fails to start), its conversations to a SQLite file there."""

    def __init__(self, checkpoint: Path, args: argparse.Namespace):
        self.tmp = Path(tempfile.mkdtemp(prefix="nanoseek-bench-serve-"))
        self.port = args.port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "nanoseek", "serve", str(checkpoint), "--port", str(self.port),
               "--db", str(self.tmp / "conversations.db"), "--max-batch", str(args.max_batch),
               "--max-queue", str(max(256, 2 * args.max_batch))]
        if args.speculative is not None:
            cmd.append("--speculative" if args.speculative else "--no-speculative")
        for flag in ("device", "dtype", "max_seq_len"):
            if getattr(args, flag) is not None:
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        cmd += args.server_arg or []
        self.cmd = cmd
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
               "MKL_NUM_THREADS": str(args.threads)}
        self.log_path = self.tmp / "server.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 300) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text()}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer /health in {timeout:.0f} s:\n"
                           f"{self.log_path.read_text()}")

    def cpu_seconds(self) -> float | None:
        """user + system CPU time of the server process so far (Linux /proc; None elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters and histogram sums/counts, by sample name."""
        out: dict[str, float] = {}
        text = httpx.get(self.base + "/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out

    def wait_idle(self, timeout: float = 60) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            h = httpx.get(self.base + "/health", timeout=5).json()
            if h.get("running") == 0 and h.get("waiting") == 0:
                return
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# one streamed request


async def stream_chat(client: httpx.AsyncClient, url: str, messages: list[dict], max_tokens: int,
                      temperature: float) -> dict:
    """POST a streamed chat completion; returns the arrival times of its text chunks, of its finish,
    and its usage (or an error)."""
    body = {"model": "nanoseek", "messages": messages, "stream": True, "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": temperature,
            "stream_options": {"include_usage": True}}
    out: dict = {"chunks": [], "finish": None, "usage": None, "error": None}
    t0 = time.perf_counter()
    out["start"] = t0
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                out["error"] = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return out
            async for line in r.aiter_lines():
                now = time.perf_counter()
                if not line.startswith("data: "):
                    continue  # blank separators, ": keep-alive" comments
                data = line[6:]
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    out["error"] = str(obj["error"])
                    break
                for ch in obj.get("choices") or ():
                    delta = ch.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content"):
                        out["chunks"].append(now)
                    if ch.get("finish_reason"):
                        out["finish"] = now
                if obj.get("usage"):
                    out["usage"] = obj["usage"]
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    out["end"] = time.perf_counter()
    if out["error"] is None and (not out["chunks"] or out["usage"] is None):
        out["error"] = "no text chunk or no usage in the stream"
    return out


def pct(xs, q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else float("nan")


# ---------------------------------------------------------------------------------------------
# the concurrency levels


async def run_level(base: str, prompts: list[list[dict]], concurrency: int, max_tokens: int,
                    temperature: float, timeout: float) -> tuple[list[dict], float, float]:
    """C clients, closed loop, until every prompt has been sent; returns (results, wall seconds,
    this process's CPU seconds)."""
    limits = httpx.Limits(max_connections=concurrency + 4,
                          max_keepalive_connections=concurrency + 4)
    results: list[dict] = []
    todo = list(reversed(prompts))
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits) as client:
        url = base + "/v1/chat/completions"

        async def worker() -> None:
            while todo:
                messages = todo.pop()
                results.append(await stream_chat(client, url, messages, max_tokens, temperature))

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return results, wall, cpu


def summarise(results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r["error"] is None]
    ttft = [r["chunks"][0] - r["start"] for r in ok]
    tpot, itl, per_chunk = [], [], []
    for r in ok:
        n = r["usage"]["completion_tokens"]
        last = r["finish"] or r["chunks"][-1]
        if n > 1:
            tpot.append((last - r["chunks"][0]) / (n - 1))
        itl += list(np.diff(r["chunks"]))
        per_chunk.append(n / len(r["chunks"]))
    out_tokens = sum(r["usage"]["completion_tokens"] for r in ok)
    return {
        "requests": len(results), "errors": len(results) - len(ok),
        "error_examples": sorted({r["error"] for r in results if r["error"]})[:3],
        "wall_s": wall, "output_tokens": out_tokens,
        "prompt_tokens_mean": (statistics.fmean(r["usage"]["prompt_tokens"] for r in ok)
                               if ok else float("nan")),
        "prompt_cache_hit_tokens": sum(r["usage"].get("prompt_cache_hit_tokens", 0) for r in ok),
        "completion_tokens": sorted({r["usage"]["completion_tokens"] for r in ok}),
        "ttft_p50_s": pct(ttft, 50), "ttft_p90_s": pct(ttft, 90),
        "ttft_max_s": max(ttft, default=float("nan")),
        "tpot_mean_s": statistics.fmean(tpot) if tpot else float("nan"),
        "tpot_p50_s": pct(tpot, 50),
        "itl_p50_s": pct(itl, 50), "itl_p90_s": pct(itl, 90), "itl_p99_s": pct(itl, 99),
        "tokens_per_chunk": statistics.fmean(per_chunk) if per_chunk else float("nan"),
        "output_tokens_per_s": out_tokens / wall, "requests_per_s": len(ok) / wall,
    }


def metric_delta(before: dict, after: dict, name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


# ---------------------------------------------------------------------------------------------
# the prefix cache


async def run_prefix(base: str, systems: list[str], questions: list[str], warm: int,
                     max_tokens: int, temperature: float, timeout: float) -> list[dict]:
    """For each system prompt: one cold request, then `warm` with other questions, one at a time."""
    rows = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout)) as client:
        url = base + "/v1/chat/completions"
        qi = 0
        for i, sys_text in enumerate(systems):
            for j in range(1 + warm):
                messages = [{"role": "system", "content": sys_text},
                            {"role": "user", "content": questions[qi]}]
                qi += 1
                r = await stream_chat(client, url, messages, max_tokens, temperature)
                if r["error"] is not None:
                    raise RuntimeError(f"prefix request failed: {r['error']}")
                u = r["usage"]
                rows.append({"system": i, "kind": "cold" if j == 0 else "warm",
                             "ttft_s": r["chunks"][0] - r["start"],
                             "prompt_tokens": u["prompt_tokens"],
                             "cached_tokens": u.get("prompt_cache_hit_tokens")})
    return rows


# ---------------------------------------------------------------------------------------------
# report


def ms(x: float) -> str:
    return f"{x * 1e3:,.1f}"


def usd_per_m(usd_per_hour: float, tokens_per_s: float) -> float:
    return usd_per_hour / (tokens_per_s * 3600) * 1e6


def report(rec: dict) -> str:
    a = rec["settings"]
    lines = [f"Machine: {rec['machine']}; server: `nanoseek serve` ({rec['server']}), "
             f"OMP_NUM_THREADS={a['threads']}, load generator in the same machine (one asyncio "
             f"process). torch {rec['torch']}, Python {rec['python']}.", "",
             f"Each request: one distinct basic_arithmetic question "
             f"(mean {rec['prompt_tokens_mean']:.0f} prompt tokens), stream=true, "
             f"max_tokens={a['max_tokens']}, ignore_eos=true, temperature {a['temperature']:g}; "
             f"C clients in a closed loop.", "",
             "| concurrency | requests | TTFT p50 (ms) | TTFT p90 (ms) | TPOT mean (ms) "
             "| TPOT p50 (ms) | ITL p50 (ms) | ITL p90 (ms) | ITL p99 (ms) | output tokens/s "
             "| requests/s | $ / M output tokens |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c, r in rec["levels"].items():
        err = f" ({r['errors']} failed)" if r["errors"] else ""
        lines.append(f"| {c} | {r['requests']}{err} | {ms(r['ttft_p50_s'])} | "
                     f"{ms(r['ttft_p90_s'])} | {ms(r['tpot_mean_s'])} | {ms(r['tpot_p50_s'])} | "
                     f"{ms(r['itl_p50_s'])} | {ms(r['itl_p90_s'])} | {ms(r['itl_p99_s'])} | "
                     f"{r['output_tokens_per_s']:,.0f} | {r['requests_per_s']:.2f} | "
                     f"{r['usd_per_m_output']:.3f} |")
    lines += ["", "| concurrency | wall (s) | server's TTFT mean (ms) | server's TPOT mean (ms) "
                  "| tokens / text chunk | server CPU (cores) | client CPU (cores) |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    def cores(x, wall):
        return "n/a" if x is None else f"{x / wall:.2f}"

    for c, r in rec["levels"].items():
        lines.append(f"| {c} | {r['wall_s']:.1f} | {ms(r['server_ttft_mean_s'])} | "
                     f"{ms(r['server_tpot_mean_s'])} | "
                     f"{r['tokens_per_chunk']:.2f} | {cores(r['server_cpu_s'], r['wall_s'])} | "
                     f"{cores(r['client_cpu_s'], r['wall_s'])} |")
    p = rec.get("prefix")
    if p:
        lines += ["", f"Prefix cache (on by default in `nanoseek serve`: an in-memory PrefixCache, "
                      f"32-token blocks), {p['system_prompts']} system prompt(s) of "
                      f"~{p['system_tokens']} tokens + short distinct questions, one request at a "
                      f"time, max_tokens={p['max_tokens']}:", "",
                  "| request | n | prompt tokens | prompt_cache_hit_tokens | TTFT median (ms) "
                  "| TTFT min-max (ms) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for kind, what in (("cold", "first with its system prompt"),
                           ("warm", "same system prompt, new question")):
            k = p[kind]
            lines.append(f"| {kind} ({what}) | {k['n']} | {k['prompt_tokens']} | "
                         f"{k['cached_tokens']} | {ms(k['ttft_median_s'])} | "
                         f"{ms(k['ttft_min_s'])}-{ms(k['ttft_max_s'])} |")
        lines.append(f"\nWarm TTFT is **{p['speedup']:.2f}x** faster than cold.")
    c = rec["cost"]
    lines += ["", f"Cost at the best throughput (concurrency {c['best_concurrency']}: "
                  f"{c['tokens_per_s']:,.0f} output tokens/s) at ${c['usd_per_hour']:g}/hour "
                  f"({c['price_note']}): "
                  f"**${c['usd_per_m_output']:.3f} per million output tokens**, "
                  f"against DeepSeek's ${DEEPSEEK_USD_PER_M_OUTPUT:.2f} "
                  f"(R1 API list price per million output tokens). "
                  f"A toy model of a few million parameters against the 671B R1: "
                  f"the figure prices the serving stack on this hardware, not comparable answers."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    try:
        xs = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not xs or min(xs) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return xs


def default_requests(c: int) -> int:
    """Enough requests that each level runs some tens of seconds on 2 vCPUs at max_tokens 128."""
    return max(48, 16 * c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--checkpoint", help="an existing checkpoint directory (model + tokenizer) "
                    "instead of bench_infer's cached cpu-small")
    ap.add_argument("--cache", default=str(Path(__file__).parent / ".cache" / "cpu-small-chat"),
                    help="bench_infer's checkpoint cache, trained there (~2 min) if missing "
                         "(default bench/.cache/cpu-small-chat)")
    g = ap.add_argument_group("load")
    g.add_argument("--concurrency", type=int_list, default=[1, 8, 32],
                   help="levels, comma-separated (default 1,8,32)")
    g.add_argument("--requests", type=int_list,
                   help="requests per level: one number for all, or one per level "
                   "(default max(48, 16 x concurrency))")
    g.add_argument("--max-tokens", type=int, default=128,
                   help="tokens each request generates (ignore_eos; default 128)")
    g.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy)")
    g.add_argument("--warmup", type=int, default=4,
                   help="untimed requests after the server starts (default 4)")
    g.add_argument("--timeout", type=float, default=600,
                   help="seconds a request may take (default 600)")
    g.add_argument("--seed", type=int, default=1_000_003 + 101, help="seed of the questions")
    g = ap.add_argument_group("prefix cache")
    g.add_argument("--system-tokens", type=int, default=512,
                   help="length of the shared system prompt (default 512)")
    g.add_argument("--prefix-repeats", type=int, default=3,
                   help="distinct system prompts, each cold once (default 3); "
                   "0 skips the prefix measurement")
    g.add_argument("--prefix-warm", type=int, default=4,
                   help="warm requests after each cold one (default 4)")
    g.add_argument("--prefix-max-tokens", type=int, default=8,
                   help="max_tokens of those requests (default 8)")
    g = ap.add_argument_group("server")
    g.add_argument("--threads", type=int,
                   default=(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                            else os.cpu_count()),
                   help="OMP_NUM_THREADS of the server (default: the CPUs this process may use)")
    g.add_argument("--max-batch", type=int,
                   help="the server's --max-batch (default: the largest concurrency, so no "
                   "request waits for a slot; the server then turns MTP speculation off "
                   "above 16)")
    g.add_argument("--speculative", action=argparse.BooleanOptionalAction, default=None,
                   help="the server's --speculative / --no-speculative (default: its own rule)")
    g.add_argument("--device", help="the server's --device")
    g.add_argument("--dtype", help="the server's --dtype")
    g.add_argument("--max-seq-len", type=int, help="the server's --max-seq-len")
    g.add_argument("--server-arg", action="append", metavar="ARG",
                   help="one more argument for `nanoseek serve`; "
                   "repeatable (use --server-arg=--flag)")
    g.add_argument("--port", type=int, default=0, help="default: a free port")
    g = ap.add_argument_group("output")
    g.add_argument("--usd-per-hour", type=float, default=None,
                   help=f"price of the machine per hour "
                        f"(default ${DEFAULT_USD_PER_HOUR}: {DEFAULT_PRICE_NOTE}; "
                        "an assumption, state yours)")
    g.add_argument("--price-note", help="what --usd-per-hour is, for the report")
    g.add_argument("--json", metavar="PATH",
                   help="also write every measurement (per request too) here")
    args = ap.parse_args()
    # Ctrl-C, also where it was ignored (a background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    levels = args.concurrency
    if args.requests is None:
        counts = [default_requests(c) for c in levels]
    elif len(args.requests) == 1:
        counts = args.requests * len(levels)
    elif len(args.requests) == len(levels):
        counts = args.requests
    else:
        ap.error("--requests takes one number or one per --concurrency level")
    args.max_batch = args.max_batch or max(levels)
    if args.usd_per_hour is None:
        args.usd_per_hour, args.price_note = (DEFAULT_USD_PER_HOUR,
                                              args.price_note or DEFAULT_PRICE_NOTE)
    args.price_note = args.price_note or "given with --usd-per-hour"

    # heavy imports after the flags, so --help is quick
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_infer import EVAL_SEED, GYM_CONFIG, build_checkpoint, cpu_busy, system_prompt

    from nanoseek.hardware import cpu_model
    from nanoseek.tasks.gym import gym_documents
    from nanoseek.tokenizer import Tokenizer

    if args.checkpoint:
        ck = Path(args.checkpoint)
    else:
        ck = build_checkpoint(Path(args.cache), INFER_SPEC["docs"], INFER_SPEC["vocab"],
                              INFER_SPEC["steps"], INFER_SPEC["seq"], INFER_SPEC["batch"])
    tok = Tokenizer.load(ck)
    busy = cpu_busy()
    if busy is not None and busy > 0.1:
        log(f"warning: the CPU was {busy:.0%} busy before starting: another job shares it")

    # prompts: a distinct question per request, every level its own slice
    total = sum(counts) + args.warmup + args.prefix_repeats * (1 + args.prefix_warm)
    questions = [r["messages"][0]["content"] for r in
                 gym_documents("basic_arithmetic", total, seed=args.seed, config=GYM_CONFIG)]
    qs = iter(questions)

    def user(q: str) -> list[dict]:
        return [{"role": "user", "content": q}]

    rec: dict = {"checkpoint": str(ck), "machine": None, "torch": torch.__version__,
                 "python": sys.version.split()[0], "cpu_busy_before": busy, "settings": {},
                 "levels": {}}
    server = Server(ck, args)
    interrupted = False

    def on_term(signum, frame):  # stop the server on SIGTERM too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        log(f"server: {' '.join(server.cmd)} (OMP_NUM_THREADS={args.threads})")
        t0 = time.perf_counter()
        server.wait_ready()
        log(f"server ready in {time.perf_counter() - t0:.1f} s; log {server.log_path}")
        banner = server.log_path.read_text().strip().splitlines()
        spec = args.speculative
        # the server's rule (engine.SPECULATE_UP_TO); the checkpoint has MTP if its config says so
        if spec is None:
            cfg = json.loads((ck / "config.json").read_text())
            spec = (bool(cfg.get("num_nextn_predict_layers") or cfg.get("num_mtp_layers"))
                    and args.max_batch <= 16)
        rec["server"] = (f"--max-batch {args.max_batch}, MTP speculation {'on' if spec else 'off'}"
                         + (f", {' '.join(args.server_arg)}" if args.server_arg else ""))
        if args.device and args.device.startswith("cuda"):
            device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else args.device
            rec["machine"] = f"{device_name}"
        else:
            rec["machine"] = f"{cpu_model()}, {os.cpu_count()} CPUs"
        rec["settings"] = {"threads": args.threads, "max_batch": args.max_batch,
                           "speculative": spec, "max_tokens": args.max_tokens,
                           "temperature": args.temperature, "warmup": args.warmup,
                           "server_cmd": server.cmd, "server_banner": banner[-1] if banner else ""}

        if args.warmup:
            warm = [user(next(qs)) for _ in range(args.warmup)]
            res, wall, _ = asyncio.run(run_level(server.base, warm, min(4, args.warmup),
                                                 args.max_tokens, args.temperature, args.timeout))
            bad = [r["error"] for r in res if r["error"]]
            if bad:
                raise RuntimeError(f"warm-up requests failed: {bad[0]}")
            log(f"warm-up: {len(res)} requests in {wall:.1f} s")

        prompt_means = []
        for c, n in zip(levels, counts):
            prompts = [user(next(qs)) for _ in range(n)]
            server.wait_idle()
            m0, s0 = server.metrics(), server.cpu_seconds()
            log(f"concurrency {c}: {n} requests of {args.max_tokens} tokens ...")
            res, wall, client_cpu = asyncio.run(run_level(server.base, prompts, c, args.max_tokens,
                                                          args.temperature, args.timeout))
            s1, m1 = server.cpu_seconds(), server.metrics()
            r = summarise(res, wall)
            r["concurrency"] = c
            r["server_cpu_s"] = None if s0 is None or s1 is None else s1 - s0
            r["client_cpu_s"] = client_cpu
            for name, key in (("nanoseek_time_to_first_token_seconds", "server_ttft_mean_s"),
                              ("nanoseek_time_per_output_token_seconds", "server_tpot_mean_s")):
                cnt = metric_delta(m0, m1, name + "_count")
                r[key] = metric_delta(m0, m1, name + "_sum") / cnt if cnt else float("nan")
            r["usd_per_m_output"] = usd_per_m(args.usd_per_hour, r["output_tokens_per_s"]) \
                if r["output_tokens_per_s"] else float("nan")
            r["per_request"] = [{"ttft_s": x["chunks"][0] - x["start"] if x["chunks"] else None,
                                 "latency_s": x["end"] - x["start"],
                                 "text_chunks": len(x["chunks"]),
                                 "usage": x["usage"], "error": x["error"]} for x in res]
            rec["levels"][c] = r
            if r["errors"]:
                log(f"  {r['errors']} requests failed, e.g. {r['error_examples'][0]}")
            if r["completion_tokens"] != [args.max_tokens]:
                log(f"  note: completion_tokens seen {r['completion_tokens']}, "
                    f"expected {args.max_tokens}")
            prompt_means.append(r["prompt_tokens_mean"])
            log(f"  {wall:.1f} s: {r['output_tokens_per_s']:,.0f} output tok/s, "
                f"{r['requests_per_s']:.2f} req/s, "
                f"TTFT p50 {ms(r['ttft_p50_s'])} ms, TPOT mean {ms(r['tpot_mean_s'])} ms, "
                f"ITL p50 {ms(r['itl_p50_s'])} ms; "
                f"prompt cache hits {r['prompt_cache_hit_tokens']} tokens")
        rec["prompt_tokens_mean"] = statistics.fmean(prompt_means)

        if args.prefix_repeats > 0:
            systems = [system_prompt(tok, args.system_tokens, EVAL_SEED + 29 + 1000 * i) for i in
                       range(args.prefix_repeats)]
            # differ from the first token on, so no cold request finds another's first block
            systems = [f"Session {i + 1}. {s}" for i, s in enumerate(systems)]
            pq = [next(qs) for _ in range(args.prefix_repeats * (1 + args.prefix_warm))]
            server.wait_idle()
            log(f"prefix cache: {args.prefix_repeats} system prompts x "
                f"(1 cold + {args.prefix_warm} warm) requests ...")
            rows = asyncio.run(run_prefix(server.base, systems, pq, args.prefix_warm,
                                          args.prefix_max_tokens, args.temperature, args.timeout))
            p: dict = {"system_prompts": args.prefix_repeats, "system_tokens": args.system_tokens,
                       "max_tokens": args.prefix_max_tokens, "requests": rows}
            for kind in ("cold", "warm"):
                ks = [x for x in rows if x["kind"] == kind]
                if not ks:
                    continue
                t = [x["ttft_s"] for x in ks]

                def span(key, ks=ks):
                    lo, hi = min(x[key] for x in ks), max(x[key] for x in ks)
                    return str(lo) if lo == hi else f"{lo}-{hi}"
                p[kind] = {"n": len(ks), "ttft_median_s": statistics.median(t),
                           "ttft_min_s": min(t), "ttft_max_s": max(t),
                           "prompt_tokens": span("prompt_tokens"),
                           "cached_tokens": span("cached_tokens")}
            if "warm" in p:
                p["speedup"] = p["cold"]["ttft_median_s"] / p["warm"]["ttft_median_s"]
                rec["prefix"] = p
                cold, hot = p["cold"], p["warm"]
                log(f"  cold TTFT {ms(cold['ttft_median_s'])} ms "
                    f"({cold['cached_tokens']} cached), warm {ms(hot['ttft_median_s'])} ms "
                    f"({hot['cached_tokens']} of {hot['prompt_tokens']} cached): "
                    f"{p['speedup']:.2f}x")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping the server")
    finally:
        server.stop()
    if interrupted:
        raise SystemExit(130)

    best_c, best = max(rec["levels"].items(), key=lambda kv: kv[1]["output_tokens_per_s"])
    rec["cost"] = {"best_concurrency": best_c, "tokens_per_s": best["output_tokens_per_s"],
                   "usd_per_hour": args.usd_per_hour, "price_note": args.price_note,
                   "usd_per_m_output": usd_per_m(args.usd_per_hour, best["output_tokens_per_s"]),
                   "deepseek_usd_per_m_output": DEEPSEEK_USD_PER_M_OUTPUT}
    if args.device and args.device.startswith("cuda") and args.price_note == DEFAULT_PRICE_NOTE:
        log("warning: the default --usd-per-hour is a 2-vCPU CPU VM's price; "
            "pass your GPU machine's")
    print(report(rec), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=1, default=str))
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
