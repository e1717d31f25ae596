"""`nanoseek chat`: a terminal conversation that streams the model's reasoning (dimmed) and then its
answer. Earlier turns go back to the model without their reasoning, as R1 is trained to see them.
What the user types is plain text: it is encoded apart from the template's control tokens, so typing
`<｜Assistant｜>` or `</think>` cannot forge a turn or close a think block."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from nanoseek.files import atomic_write
from nanoseek.infer.engine import Engine
from nanoseek.infer.sampling import SamplingParams
from nanoseek.tokenizer import THINK_END

HELP = """commands:
  /think on|off   reason before answering (on), or answer at once (off: an empty think block)
  /temp T         sampling temperature, 0 = greedy (now {temp})
  /reset          forget the conversation
  /save FILE      write the conversation as JSON (messages with reasoning_content)
  /help           this list
  /quit           leave (or Ctrl-D); Ctrl-C stops a reply that is being written"""

DIM, RESET = "\x1b[2m", "\x1b[0m"


@dataclass
class ChatSession:
    engine: Engine
    params: SamplingParams
    thinking: bool = True
    system: str | None = None
    messages: list[dict] = field(default_factory=list)

    def prompt(self) -> list[int]:
        """The conversation in the model's chat format; what the user typed stays text (a
        control token's spelling in it is no control token)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        turns = [{"role": m["role"], "content": m["content"]} for m in self.messages]
        return self.engine.tok.encode_chat(head + turns, thinking=self.thinking)

    def command(self, line: str) -> str | None:
        """Run a /command; returns what to print, or None to quit."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        if name in ("quit", "exit", "q"):
            return None
        if name == "help":
            return HELP.format(temp=self.params.temperature)
        if name == "think":
            if arg not in ("on", "off"):
                return "usage: /think on|off"
            self.thinking = arg == "on"
            return f"thinking {arg}"
        if name == "temp":
            try:
                self.params = replace(self.params, temperature=float(arg))
            except ValueError as e:
                return f"usage: /temp T, T in [0, 100] ({e})" if arg else "usage: /temp T"
            return f"temperature {self.params.temperature:g}"
        if name == "reset":
            self.messages.clear()
            return "conversation cleared"
        if name == "save":
            if not arg:
                return "usage: /save FILE"
            path = Path(arg).expanduser()
            if path.is_dir():
                return f"{path} is a directory: /save needs a file name"
            if not path.parent.is_dir():  # a typo in the path, not a request to create folders
                return f"could not save to {path}: no directory {path.parent}"
            try:
                saved = json.dumps({"messages": self.messages}, ensure_ascii=False, indent=2)
                atomic_write(path, saved + "\n")
            except OSError as e:
                return f"could not save to {path}: {e.strerror}"
            return f"saved {len(self.messages)} messages to {path}"
        return f"unknown command /{name} (try /help)"

    def reply(self, user: str, out: TextIO, color: bool) -> None:
        """Stream one answer to `out`; Ctrl-C stops it (what was written so far is kept)."""
        self.messages.append({"role": "user", "content": user})
        try:
            prompt = self.engine.validate(self.prompt(), self.params)
        except ValueError as e:  # the conversation outgrew the context: say so, keep the session
            self.messages.pop()
            out.write(f"[{e}; /reset starts over, or raise --max-seq-len]\n")
            return
        show = _Display(out, color)
        reasoning, content, stopped = "", "", False
        stream = self.engine.stream([prompt], self.params)
        try:
            for d in stream:
                reasoning += d.reasoning
                content += d.content
                if self.thinking:
                    show.write(d.reasoning, d.content)
        except KeyboardInterrupt:
            stream.close()  # frees the engine's slot
            stopped = True
        if not self.thinking:
            # The prompt closed an empty think block, so the parser reads the output as answer. A
            # model not taught to answer straight away reasons anyway and closes its block again:
            # the text before that stray </think> is its reasoning, not part of the answer. The
            # answer is held until it ends because only then is it known whether such a tag comes.
            extra, content = split_stray_reasoning(content)
            reasoning += extra
            show.write(extra, content)
        show.end(stopped)
        self.messages.append({"role": "assistant", "content": content,
                              "reasoning_content": reasoning})


def split_stray_reasoning(content: str) -> tuple[str, str]:
    """(reasoning, answer) of an answer written after a closed think block: whatever comes before
    its last `</think>` is reasoning (R1 writes `reasoning\n</think>\n\nanswer`), its tags
    dropped."""
    *before, answer = content.split(THINK_END)
    reasoning = "\n".join(b.strip() for b in before if b.strip())
    return reasoning, (answer.lstrip() if before else answer)


class _Display:
    """Reasoning dimmed after `thinking: `, then a blank line and the answer."""

    def __init__(self, out: TextIO, color: bool):
        self.out, self.color = out, color
        self.reasoning = self.content = False  # whether each has started

    def write(self, reasoning: str, content: str) -> None:
        if reasoning:
            if not self.reasoning:
                self.out.write((DIM if self.color else "") + "thinking: ")
                self.reasoning = True
            self.out.write(reasoning)
        if content:
            if not self.content and self.reasoning:
                self.out.write((RESET if self.color else "") + "\n\n")
            self.content = True
            self.out.write(content)
        self.out.flush()

    def end(self, stopped: bool) -> None:
        dimmed = self.color and self.reasoning and not self.content
        self.out.write((RESET if self.color and (stopped or dimmed) else "")
                       + (" [stopped]" if stopped else "") + "\n")
        self.out.flush()


def run_chat(session: ChatSession, inp: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    color = out.isatty() and "NO_COLOR" not in os.environ
    interactive = inp.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    out.write("nanoseek chat: type a message, /help for commands, /quit to leave\n")
    out.flush()
    while True:
        try:
            line = input("you> ") if interactive else _read(inp, out)
        except EOFError:
            out.write("\n")
            return 0
        except KeyboardInterrupt:
            out.write("\n")
            continue
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            said = session.command(line)
            if said is None:
                return 0
            out.write(said + "\n")
            continue
        session.reply(line, out, color)


def _read(inp: TextIO, out: TextIO) -> str:
    out.write("you> ")
    out.flush()
    line = inp.readline()
    if not line:
        raise EOFError
    return line
