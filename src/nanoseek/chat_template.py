"""A model's own chat format, for checkpoints that are not DeepSeek's: its Jinja chat template and
special tokens, as tokenizer_config.json (and config.json) of a Hugging Face directory give them.

A converted SmolLM2 speaks ChatML (`<|im_start|>user\\n...<|im_end|>`), a Llama 3 its header
tokens: nanoseek renders whatever the template says, in a sandbox, the way transformers'
apply_chat_template does (same Jinja settings and helpers), so a prompt is token for token the one
the model was trained on.

One thing is added: message text is never a control token. Before rendering, every spelling of an
added token inside a message gets an invisible MARK after its first character, so it no longer
matches; the rendered string is then cut at the added tokens that are left (the template's own),
and the marks come out of the text between them, which is encoded as plain text. A template may
still edit the text (trim it, split off reasoning): the marks ride along.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nanoseek.errors import UserError

# A Unicode non-character (the last of plane 16): no text a user means to send holds it, and no
# template looks for it. It is removed from message text, so it cannot be smuggled in either.
MARK = "\U0010ffff"


class TemplateError(UserError):
    """A chat template that does not render (a syntax error, or the template's own
    raise_exception on messages it refuses)."""


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


@dataclass
class ChatTemplate:
    """The chat format of a foreign checkpoint directory."""

    source: str | None  # the Jinja template; None when the directory has none (no chats then)
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    add_bos_token: bool = False  # a raw prompt starts with bos_token
    stop_token_ids: tuple[int, ...] = ()  # besides eos_token: config.json's eos_token_id(s)
    where: str = "tokenizer_config.json"
    _compiled: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> ChatTemplate:
        path = Path(path)
        config = _read_json(path / "tokenizer_config.json")
        stops = []
        for name in ("config.json", "generation_config.json"):
            eos = _read_json(path / name).get("eos_token_id")
            stops += eos if isinstance(eos, list) else [eos]
        source = config.get("chat_template")
        if isinstance(source, list):  # several named templates: the default one
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
        return cls(source if isinstance(source, str) else None,
                   _token_text(config.get("bos_token")), _token_text(config.get("eos_token")),
                   _token_text(config.get("pad_token")), bool(config.get("add_bos_token", False)),
                   tuple(dict.fromkeys(i for i in stops if isinstance(i, int))),
                   str(path / "tokenizer_config.json"))

    def render(self, messages: list[dict], add_generation_prompt: bool = True,
               thinking: bool = True) -> str:
        """The template's output, as apply_chat_template(tokenize=False) gives it."""
        if self.source is None:
            raise TemplateError(f"{self.where} has no chat_template: this model takes raw "
                                "prompts only")
        if self._compiled is None:
            self._compiled = _environment().from_string(self.source)
        import jinja2

        try:
            return self._compiled.render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                # the switch templates of reasoning models read (Qwen3's name, and ours)
                enable_thinking=thinking, thinking=thinking, bos_token=self.bos_token or "",
                eos_token=self.eos_token or "", pad_token=self.pad_token or "")
        except jinja2.TemplateError as e:
            raise TemplateError(f"the chat template of {self.where} failed: {e}") from None

    def pieces(self, messages: list[dict], controls: list[str], add_generation_prompt: bool,
               thinking: bool) -> list[tuple[str, bool]]:
        """The rendered chat as (text, is_control) pieces, where only the template's own added
        tokens (controls: their spellings) are control pieces."""
        def mark(text: str) -> str:
            text = text.replace(MARK, "")
            for c in controls:
                text = text.replace(c, c[0] + MARK + c[1:])
            return text

        controls = [c for c in controls if len(c) > 1]  # (a MARK cannot split one character)
        marked = [{"role": m["role"], "content": mark(m["content"])} for m in messages]
        text = self.render(marked, add_generation_prompt, thinking)
        if not controls:
            return [(text.replace(MARK, ""), False)]
        # longest first, so a token that is a prefix of another does not cut it
        split = re.compile("|".join(re.escape(c) for c in sorted(controls, key=len, reverse=True)))
        out, at = [], 0
        for m in split.finditer(text):
            out += [(text[at:m.start()].replace(MARK, ""), False), (m.group(), True)]
            at = m.end()
        return out + [(text[at:].replace(MARK, ""), False)]

    def turn_end(self, controls: list[str]) -> str | None:
        """The added token this template closes an assistant turn with (ChatML's `<|im_end|>`,
        Llama 3's `<|eot_id|>`), or None: the token a model of it ends its answers with, which a
        tokenizer_config.json without an eos_token does not name. Read from a rendered turn: the
        first control token after the assistant's text."""
        if self.source is None:
            return None
        chat = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
        try:
            pieces = self.pieces(chat, controls, add_generation_prompt=False, thinking=False)
        except TemplateError:  # a template that wants other messages: no turn to read
            return None
        answer = next((i for i, (text, control) in enumerate(pieces)
                       if not control and "Hello." in text), len(pieces))
        return next((text for text, control in pieces[answer:] if control), None)


def _read_json(file: Path) -> dict:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TemplateError(f"could not read {file}: {e}") from None
    return data if isinstance(data, dict) else {}


def _environment() -> Any:
    """Jinja as transformers sets it up for chat templates: sandboxed, blocks trimmed, loop
    controls, and the helpers templates call."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env
