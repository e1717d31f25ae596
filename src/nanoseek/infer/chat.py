"""`nanoseek chat`: a terminal conversation that streams the model's reasoning (dimmed) and then its
answer. Earlier turns go back to the model without their reasoning, as R1 is trained to see them."""

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
        reasoning, content, started = "", "", False
        prompt = self.prompt()
        try:
            self.engine.validate(prompt, self.params)
        except ValueError as e:  # the conversation outgrew the context: say so, keep the session
            self.messages.pop()
            out.write(f"[{e}; /reset starts over, or raise --max-seq-len]\n")
            return
        stream = self.engine.stream([prompt], self.params)
        try:
            for d in stream:
                if d.reasoning:
                    if not reasoning:
                        out.write((DIM if color else "") + "thinking: ")
                    reasoning += d.reasoning
                    out.write(d.reasoning)
                if d.content:
                    if not started:
                        if reasoning:
                            out.write((RESET if color else "") + "\n\n")
                        started = True
                    content += d.content
                    out.write(d.content)
                out.flush()
        except KeyboardInterrupt:
            stream.close()  # frees the engine's slot
            out.write((RESET if color else "") + " [stopped]")
        if color and reasoning and not started:
            out.write(RESET)
        out.write("\n")
        out.flush()
        self.messages.append({"role": "assistant", "content": content,
                              "reasoning_content": reasoning})


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
