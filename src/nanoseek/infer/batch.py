"""`nanoseek generate`: completions for a JSONL file of prompts, written as JSONL in input order.

Each input line holds one of "prompt" (raw text), "messages" (a chat, rendered with the model's
template; "thinking": false closes R1's think block) or "prompt_token_ids", and optionally any
SamplingParams field ("max_tokens", "temperature", "n", "seed", "stop", ...) overriding the
command's defaults.
Finished lines are appended to OUTPUT.partial as they complete, so a killed run resumes where it
stopped; the output file appears, complete and in order, only at the end.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from nanoseek.files import DataError, atomic_file, jsonl_objects
from nanoseek.infer.engine import Engine
from nanoseek.infer.sampling import SamplingParams
from nanoseek.infer.sequence import Completion
from nanoseek.tokenizer import Tokenizer, _check_messages

PARAM_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}
PROMPT_KEYS = ("prompt", "messages", "prompt_token_ids")
# "id" is echoed to the output, so results can be matched to inputs
OTHER_KEYS = {"thinking", "id"}
Requests = list[tuple[object, SamplingParams, dict]]  # (prompt, params, the input row)


@dataclasses.dataclass
class Chat:
    """A "messages" prompt: encoded by the engine's tokenizer, whose template it needs."""
    messages: list[dict]
    thinking: bool = True

    def ids(self, tok: Tokenizer) -> list[int]:
        return tok.encode_chat(self.messages, thinking=self.thinking)


def read_requests(path: str | Path, defaults: SamplingParams) -> Requests:
    """(prompt, params, the input row) per line; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    out = []
    for where, row in jsonl_objects(path):
        keys = [k for k in PROMPT_KEYS if k in row]
        if len(keys) != 1:
            raise DataError(f"{where}: needs exactly one of prompt, messages, prompt_token_ids; "
                            f"has {keys or 'none'}")
        unknown = sorted(set(row) - PARAM_FIELDS - OTHER_KEYS - set(PROMPT_KEYS))
        if unknown:
            raise DataError(f"{where}: unknown key {unknown[0]!r} (allowed: "
                            f"{', '.join(PROMPT_KEYS)}, thinking, id, and the sampling settings "
                            f"{', '.join(sorted(PARAM_FIELDS))})")
        try:
            if "messages" in row:
                _check_messages(row["messages"])
                prompt = Chat(row["messages"], row.get("thinking", True))
            elif "prompt" in row:
                prompt = row["prompt"]
                if not isinstance(prompt, str):
                    raise ValueError("prompt must be a string (token ids go in prompt_token_ids)")
            else:
                prompt = row["prompt_token_ids"]
                if not isinstance(prompt, list) or not all(isinstance(i, int) for i in prompt):
                    raise ValueError("prompt_token_ids must be a list of integers")
            given = {k: v for k, v in row.items() if k in PARAM_FIELDS}
            params = dataclasses.replace(defaults, **given)
        except (ValueError, TypeError) as e:
            raise DataError(f"{where}: {e}") from None
        out.append((prompt, params, row))
    if not out:
        raise DataError(f"{path}: no prompts")
    return out


def _completion(c: Completion) -> dict:
    out = {"text": c.text, "reasoning_content": c.reasoning_content, "content": c.content,
           "finish_reason": c.finish_reason, "token_ids": c.token_ids}
    if c.logprobs is not None:
        out["logprobs"] = [{"token_id": lp.token_id, "logprob": lp.logprob, "top": lp.top}
                           for lp in c.logprobs]
    return out


def record(completions: list[Completion]) -> dict:
    first = completions[0]
    return {
        "completions": [_completion(c) for c in completions],
        "usage": {"prompt_tokens": first.usage.prompt_tokens,
                  "completion_tokens": sum(c.usage.completion_tokens for c in completions),
                  "prompt_cache_hit_tokens": first.usage.cached_tokens,
                  "prompt_cache_miss_tokens": first.usage.uncached_tokens,
                  "reasoning_tokens": sum(c.usage.reasoning_tokens for c in completions)},
    }


def generate_file(engine: Engine, requests: Requests, output: str | Path,
                  inp: str | Path = "input", progress: bool = True) -> int:
    """Run every request (from read_requests(inp)) not already in OUTPUT.partial; returns the
    count."""
    from tqdm.auto import tqdm

    output = Path(output)
    partial = output.with_name(output.name + ".partial")
    done: dict[int, dict] = {}
    if partial.exists():
        kept = 0  # bytes of whole lines; a line cut by a kill, and anything after it, is redone
        with open(partial, "rb") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    done[row["index"]] = row
                except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
                    break
                kept += len(line)
        with open(partial, "r+b") as f:
            f.truncate(kept)
    requests = [(p.ids(engine.tok) if isinstance(p, Chat) else p, params, row)
                for p, params, row in requests]
    for i, (prompt, params, _) in enumerate(requests):  # refuse bad requests before any work
        if i not in done:
            try:
                engine.validate(prompt, params)
            except ValueError as e:
                raise DataError(f"{inp} request {i + 1}: {e}") from None
    # request id -> (input index, the engine's request, whose .done fills as samples finish)
    todo = {}
    for i, (prompt, params, _) in enumerate(requests):
        if i not in done:
            rid = engine.add_request(prompt, params, deltas=False)  # rows are written whole
            todo[rid] = (i, engine.requests[rid])
    bar = tqdm(total=len(requests), initial=len(done), desc="generating", unit="prompt",
               disable=not progress)
    with open(partial, "a", encoding="utf-8") as f:
        while todo:
            for d in engine.step():
                finished = d.finish_reason is not None and d.request_id not in engine.requests
                if not finished or d.request_id not in todo:
                    continue
                i, req = todo.pop(d.request_id)
                row = {"index": i, **record(req.done)}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                done[i] = row
                bar.update(1)
    bar.close()
    with atomic_file(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, (_, _, row) in enumerate(requests):
            echo = {k: row[k] for k in ("prompt", "messages", "id") if k in row}
            f.write(json.dumps({**echo, **done[i]}, ensure_ascii=False) + "\n")
    partial.unlink()
    return len(requests)
