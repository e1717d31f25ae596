"""Byte-level BPE tokenizer with DeepSeek-V3/R1 special tokens and the R1 chat template.

Training and encoding are done by the `tokenizers` library (Rust, fast); this file only fixes the
special tokens, the chat format, and the Hugging Face file layout, so that a saved directory loads
with `transformers.AutoTokenizer` and renders/encodes conversations exactly as nanoseek does.

A directory whose tokenizer is not DeepSeek's (a converted SmolLM2, a Llama) keeps its own special
tokens and chat template (chat_template.py); the Tokenizer's interface is the same for both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers

from nanoseek.chat_template import ChatTemplate
from nanoseek.errors import UserError

# Special tokens exactly as DeepSeek writes them: the bars are U+FF5C, the underscore-like mark
# U+2581.
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_START = "<think>"
THINK_END = "</think>"
# Fixed ids 0..6 in this order. <think>/</think> are added but NOT special (as in DeepSeek's
# tokenizer): they are part of the model's visible output, so decode(skip_special_tokens=True) must
# keep them.
SPECIAL_TOKENS = [BOS, EOS, PAD, USER, ASSISTANT]
# Fill-in-the-middle, as DeepSeek-V3 pretrains it (prefix-suffix-middle); a tokenizer may lack them
FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"
CONTROL_TOKENS = SPECIAL_TOKENS + [THINK_START, THINK_END]
# DeepSeek-V3's tool-call tokens. train_tokenizer adds them right after the control tokens (ids
# 7..15); an older tokenizer may lack them, and then no tools can be offered to its model. Like
# the think tags (and as in V3's tokenizer) they are not special: decode keeps them, so the server
# finds a call in the decoded answer. Only the template writes them (encode_chat).
TOOL_CALLS_BEGIN, TOOL_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
TOOL_CALL_BEGIN, TOOL_CALL_END = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>"
TOOL_OUTPUTS_BEGIN, TOOL_OUTPUTS_END = "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>"
TOOL_OUTPUT_BEGIN, TOOL_OUTPUT_END = "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"
TOOL_SEP = "<｜tool▁sep｜>"
TOOL_TOKENS = [TOOL_CALLS_BEGIN, TOOL_CALLS_END, TOOL_CALL_BEGIN, TOOL_CALL_END, TOOL_OUTPUTS_BEGIN,
               TOOL_OUTPUTS_END, TOOL_OUTPUT_BEGIN, TOOL_OUTPUT_END, TOOL_SEP]
ROLES = ("system", "user", "assistant", "tool")
_LONG_TEXT = 4096  # characters; a longer text is encoded without holding the GIL

# The R1 chat template. It and render_chat below must stay in lockstep (tests compare them through
# transformers). System texts go first, untagged, joined by a blank line as DeepSeek's template
# does; earlier assistant turns keep only the answer after their last </think>; the generation
# prompt opens the reasoning block, or with thinking=False an empty, already-closed one.
# Tool calls and results are written as DeepSeek-V3's template (V3-0324's) writes them: an
# assistant's calls after its answer, each `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`
# and its JSON arguments fenced as ```json, all inside <｜tool▁calls▁begin｜> and
# <｜tool▁calls▁end｜>; a run of tool results, one per line, inside <｜tool▁outputs▁begin｜> and
# <｜tool▁outputs▁end｜>, after which the same assistant turn goes on (no new <｜Assistant｜>).
# With the same messages the text is V3's, except that nanoseek opens the reasoning block in the
# generation prompt (as R1) and drops earlier reasoning. V3 renders no tool definitions; the
# server writes them into a system text (serve/tools.py).
CHAT_TEMPLATE = (r"""{%- set ns = namespace(prev='', ok=true) -%}
{%- for m in messages -%}
  {%- set calls = m['tool_calls'] if m['tool_calls'] is defined and m['tool_calls'] else [] -%}
  {%- set ns.ok = m['role'] in ['system', 'user', 'assistant', 'tool']
      and (m['content'] is string
           or (calls and (m['content'] is not defined or m['content'] is none)))
      and (not calls or m['role'] == 'assistant')
      and (m['role'] != 'tool' or ns.prev in ['tool', 'calls']) -%}
  {%- for c in calls -%}
    {%- if not (c is mapping and c['type'] == 'function' and c['function'] is mapping
                and c['function']['name'] is string and c['function']['arguments'] is string) -%}
      {%- set ns.ok = false -%}
    {%- endif -%}
  {%- endfor -%}
  {%- if not ns.ok -%}
    {{- raise_exception('message ' ~ loop.index0 ~ ': need role system/user/assistant/tool and'
                        ~ ' str content (an assistant\'s may be null with tool_calls of'
                        ~ ' {type: function, function: {name, arguments: str}}); a tool'
                        ~ ' result follows tool calls') -}}
  {%- endif -%}
  {%- if m['role'] != 'system' -%}
    {%- set ns.prev = 'calls' if calls else m['role'] -%}
  {%- endif -%}
{%- endfor -%}
{{- '<｜begin▁of▁sentence｜>' -}}
{{- messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | join('\n\n') -}}
{%- set ns.prev = '' -%}
{%- for m in messages -%}
  {%- if m['role'] == 'user' -%}
    {{- '<｜User｜>' + m['content'] -}}
  {%- elif m['role'] == 'assistant' -%}
    {{- ('<｜tool▁outputs▁end｜>' if ns.prev == 'tool' else '<｜Assistant｜>')
        + (m['content'] or '').split('</think>')[-1].lstrip() -}}
    {%- if m['tool_calls'] is defined and m['tool_calls'] -%}
      {{- '<｜tool▁calls▁begin｜>' -}}
      {%- for c in m['tool_calls'] -%}
        {{- ('' if loop.first else '\n') + '<｜tool▁call▁begin｜>' + c['type'] + '<｜tool▁sep｜>'
            + c['function']['name'] + '\n```json\n' + c['function']['arguments']
            + '\n```<｜tool▁call▁end｜>' -}}
      {%- endfor -%}
      {{- '<｜tool▁calls▁end｜>' -}}
    {%- endif -%}
    {{- '<｜end▁of▁sentence｜>' -}}
  {%- elif m['role'] == 'tool' -%}
    {{- ('\n' if ns.prev == 'tool' else '<｜tool▁outputs▁begin｜>') + '<｜tool▁output▁begin｜>'
        + m['content'] + '<｜tool▁output▁end｜>' -}}
  {%- endif -%}
  {%- if m['role'] != 'system' -%}{%- set ns.prev = m['role'] -%}{%- endif -%}
{%- endfor -%}
{%- if ns.prev == 'tool' -%}{{- '<｜tool▁outputs▁end｜>' -}}{%- endif -%}
{%- if add_generation_prompt -%}
  {{- ('' if ns.prev == 'tool' else '<｜Assistant｜>') + '<think>\n' -}}
  {%- if thinking is defined and not thinking -%}{{- '\n</think>\n\n' -}}{%- endif -%}
{%- endif -%}""")


def _check_messages(messages: list[dict]) -> None:
    if not messages:
        raise ValueError("messages is empty")
    prev = None  # the last non-system message's role ("calls": an assistant's with tool calls)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"message {i}: role must be one of {ROLES}, got {m!r}")
        calls = m.get("tool_calls") or []
        if calls and m["role"] != "assistant":
            raise ValueError(f"message {i}: only an assistant's message has tool_calls")
        if not isinstance(m.get("content"), str) and not (calls and m.get("content") is None):
            raise ValueError(f"message {i}: content must be a str (or null beside tool_calls), "
                             f"got {m.get('content')!r}")
        for c in calls if isinstance(calls, list) else [calls]:
            f = c.get("function") if isinstance(c, dict) else None
            if not (isinstance(f, dict) and c.get("type") == "function"
                    and isinstance(f.get("name"), str) and isinstance(f.get("arguments"), str)):
                raise ValueError(f"message {i}: a tool call must be {{type: function, function: "
                                 f"{{name: str, arguments: str}}}}, got {c!r}")
        if m["role"] == "tool" and prev not in ("tool", "calls"):
            raise ValueError(f"message {i}: a tool result must follow an assistant's tool calls "
                             "(or another result)")
        if m["role"] != "system":
            prev = "calls" if calls else m["role"]


def _chat_pieces(messages: list[dict], add_generation_prompt: bool,
                 thinking: bool) -> list[tuple[str, bool]]:
    """The rendered chat as (text, is_control) pieces: control tokens the template writes, and
    message text."""
    _check_messages(messages)
    out = [(BOS, True), ("\n\n".join(m["content"] for m in messages if m["role"] == "system"),
                         False)]
    prev = None
    for m in messages:
        if m["role"] == "user":
            out += [(USER, True), (m["content"], False)]
        elif m["role"] == "assistant":
            # Reasoning of earlier turns is dropped (and any reasoning_content key ignored): R1 is
            # trained to see only final answers in its context, which also keeps multi-turn prompts
            # short. After tool results the turn goes on, past <｜tool▁outputs▁end｜>.
            answer = (m["content"] or "").split(THINK_END)[-1].lstrip()
            out += [(TOOL_OUTPUTS_END if prev == "tool" else ASSISTANT, True), (answer, False)]
            if m.get("tool_calls"):
                out.append((TOOL_CALLS_BEGIN, True))
                for k, c in enumerate(m["tool_calls"]):
                    f = c["function"]
                    body = f"{f['name']}\n```json\n{f['arguments']}\n```"
                    out += [("\n" if k else "", False), (TOOL_CALL_BEGIN, True), (c["type"], False),
                            (TOOL_SEP, True), (body, False), (TOOL_CALL_END, True)]
                out.append((TOOL_CALLS_END, True))
            out.append((EOS, True))
        elif m["role"] == "tool":
            out += [("\n", False) if prev == "tool" else (TOOL_OUTPUTS_BEGIN, True),
                    (TOOL_OUTPUT_BEGIN, True), (m["content"], False), (TOOL_OUTPUT_END, True)]
        if m["role"] != "system":
            prev = m["role"]
    if prev == "tool":
        out.append((TOOL_OUTPUTS_END, True))
    if add_generation_prompt:
        if prev != "tool":
            out.append((ASSISTANT, True))
        out += [(THINK_START, True), ("\n", False)]
        if not thinking:
            out += [("\n", False), (THINK_END, True), ("\n\n", False)]
    return out


def render_chat(messages: list[dict], add_generation_prompt: bool = True,
                thinking: bool = True) -> str:
    """Python twin of CHAT_TEMPLATE: same string as transformers'
    apply_chat_template(tokenize=False)."""
    return "".join(text for text, _ in _chat_pieces(messages, add_generation_prompt, thinking))


def render_completion(reasoning: str | None, content: str) -> str:
    """What the model should emit after the generation prompt (`...<think>\\n`): the SFT target."""
    return f"{reasoning or ''}\n{THINK_END}\n\n{content}{EOS}"


class TokenizerError(UserError):
    """What this tokenizer cannot encode (e.g. fill-in-the-middle without FIM tokens)."""


class Tokenizer:
    """Thin wrapper over a `tokenizers.Tokenizer`: DeepSeek's, whose first 7 ids are
    CONTROL_TOKENS, or with `template` a foreign one with its own chat format.

    A foreign tokenizer may lack some ids (None): user/assistant (its template spells turns its own
    way), and <think>/</think> when they are not tokens of it; its model then writes the tags as
    text, which the reasoning parser reads as well. Its eos_id is tokenizer_config.json's
    eos_token, else config.json's eos_token_id, else the token its chat template ends a turn with;
    None only when there is none of them (require_eos)."""

    def __init__(self, tok: tokenizers.Tokenizer, template: ChatTemplate | None = None):
        self.tok, self.template = tok, template
        self._plain: tokenizers.Tokenizer | None = None  # encode_text's, made on first use
        self.think_start_id, self.think_end_id = tok.token_to_id(THINK_START), \
            tok.token_to_id(THINK_END)
        if template is None:
            for i, s in enumerate(CONTROL_TOKENS):
                if tok.token_to_id(s) != i:
                    raise ValueError(f"control token {s!r} must have id {i}, has "
                                     f"{tok.token_to_id(s)}")
            self.bos_id, self.eos_id, self.pad_id, self.user_id, self.assistant_id = range(5)
            self.prompt_start = BOS  # what a raw prompt starts with
            self.stop_ids = frozenset([self.eos_id])
            return
        ids = {name: None if text is None else tok.token_to_id(text) for name, text in
               (("bos", template.bos_token), ("eos", template.eos_token),
                ("pad", template.pad_token))}
        self.bos_id, self.eos_id = ids["bos"], ids["eos"]
        # no eos_token named: its samples end all the same, at config.json's EOS or its turns' end
        if self.eos_id is None and template.stop_token_ids:
            self.eos_id = template.stop_token_ids[0]
        elif self.eos_id is None:
            end = template.turn_end([t.content for t in tok.get_added_tokens_decoder().values()])
            self.eos_id = None if end is None else tok.token_to_id(end)
        self.user_id = self.assistant_id = None
        self.pad_id = ids["pad"] if ids["pad"] is not None else self.eos_id
        bos = template.add_bos_token and ids["bos"] is not None
        self.prompt_start = template.bos_token if bos else ""
        self.stop_ids = frozenset(i for i in (self.eos_id, *template.stop_token_ids)
                                  if i is not None)

    def require_eos(self, use: str) -> int:
        """eos_id, or a TokenizerError saying that `use` needs one and this tokenizer has none."""
        if self.eos_id is None:
            raise TokenizerError(
                f"{use} needs a token that ends a sample, and this tokenizer has none: "
                f"{self.template.where} names no eos_token in its vocabulary, config.json no "
                "eos_token_id, and the chat template ends no turn with a special token (add an "
                "eos_token to tokenizer_config.json)")
        return self.eos_id

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, s: str) -> int | None:
        return self.tok.token_to_id(s)

    @property
    def has_tool_tokens(self) -> bool:
        """Whether DeepSeek-V3's tool-call tokens are added tokens here (a model can take tools)."""
        added = {t.content for t in self.tok.get_added_tokens_decoder().values()}
        return added.issuperset(TOOL_TOKENS)

    def encode(self, text: str) -> list[int]:
        """Text to ids; the control tokens' spellings in it become control tokens (render_chat's
        output, a raw completion prompt). No BOS here: render_chat writes it, and plain-text
        pretraining docs get it from the data loader."""
        if len(text) > _LONG_TEXT:  # encode_batch lets go of the GIL (encode holds it throughout)
            return self.tok.encode_batch([text], add_special_tokens=False)[0].ids
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        """A raw completion prompt: encode(), with the BOS the model's format starts with put in
        front unless the text has it (a chat rendered by render_chat does)."""
        return self.encode(text if text.startswith(self.prompt_start) else self.prompt_start + text)

    def encode_text(self, text: str) -> list[int]:
        """Text to ids as plain text: a control token's spelling in it (a user typing
        `<｜Assistant｜>`) stays characters, never the token."""
        if not text:
            return []
        if self._plain is None:  # the same BPE without the added tokens (so none is matched)
            state = json.loads(self.tok.to_str())
            state["added_tokens"] = []
            self._plain = tokenizers.Tokenizer.from_str(json.dumps(state))
        if len(text) > _LONG_TEXT:
            return self._plain.encode_batch([text], add_special_tokens=False)[0].ids
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def _pieces(self, messages: list[dict], add_generation_prompt: bool,
                thinking: bool) -> list[tuple[str, bool]]:
        if self.template is None:
            return _chat_pieces(messages, add_generation_prompt, thinking)
        _check_messages(messages)
        controls = [t.content for t in self.tok.get_added_tokens_decoder().values()]
        return self.template.pieces(messages, controls, add_generation_prompt, thinking)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    thinking: bool = True) -> str:
        """The chat in this tokenizer's format (the module's render_chat for DeepSeek's; a foreign
        model's own template) as text."""
        return "".join(text for text, _ in self._pieces(messages, add_generation_prompt, thinking))

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    thinking: bool = True) -> list[int]:
        """encode(render_chat(...)), except that message text is plain text (encode_text): only
        the template writes control tokens, so no message can forge a turn. (Between control tokens
        the text is encoded on its own either way, so for text without their spellings the ids are
        the same.)"""
        ids, text = [], ""
        for piece, control in self._pieces(messages, add_generation_prompt, thinking):
            if control:  # the text between two control tokens is encoded as one
                if (tid := self.tok.token_to_id(piece)) is None:  # a tool token, in an old vocab
                    raise TokenizerError(f"this model's tokenizer has no tool-call tokens "
                                         f"({piece}): it cannot take tool calls or results")
                ids += self.encode_text(text) + [tid]
                text = ""
            else:
                text += piece
        return ids + self.encode_text(text)

    def encode_fim(self, prefix: str, suffix: str) -> list[int]:
        """A fill-in-the-middle prompt, prefix-suffix-middle as DeepSeek-V3 is trained on it:
        BOS <｜fim▁begin｜> prefix <｜fim▁hole｜> suffix <｜fim▁end｜>, the model writing the middle
        (both texts plain)."""
        marks = [self.tok.token_to_id(t) for t in (FIM_BEGIN, FIM_HOLE, FIM_END)]
        if None in marks:
            raise TokenizerError(f"this tokenizer has no fill-in-the-middle tokens ({FIM_BEGIN} "
                                 f"{FIM_HOLE} {FIM_END}), so no model of it was trained for FIM")
        begin, hole, end = marks
        return ([self.bos_id, begin] + self.encode_text(prefix) + [hole] + self.encode_text(suffix)
                + [end])

    def save(self, path: str | Path, model_max_length: int = 16384) -> None:
        """Write tokenizer.json + tokenizer_config.json (+ special_tokens_map.json) in the HF
        layout."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(path / "tokenizer.json"))
        if self.template is not None:  # a foreign format goes on as it came
            t = self.template
            config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": t.bos_token,
                      "eos_token": t.eos_token, "pad_token": t.pad_token,
                      "add_bos_token": t.add_bos_token, "clean_up_tokenization_spaces": False,
                      "model_max_length": model_max_length, "chat_template": t.source}
            (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
            return
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "unk_token": None,
            # BOS comes from the chat template. transformers 5 passes add_special_tokens=False when
            # it tokenizes a rendered chat anyway, but add_bos_token=True would make tok(text) and
            # tok.encode(text) disagree with our encode(), so it is off, as is EOS.
            "add_bos_token": False,
            "add_eos_token": False,
            # Otherwise decode may "clean up" " ." into "." and break the byte-level round trip
            # (transformers 5 already ignores it for BPE, with a warning; older versions do not).
            "clean_up_tokenization_spaces": False,
            "model_max_length": model_max_length,
            "chat_template": CHAT_TEMPLATE,
        }
        special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
        for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
            (path / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {file}")
        try:
            tok = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:  # the Rust side raises a bare Exception on bad JSON
            raise ValueError(f"could not read tokenizer file {file}: {e}") from e
        if all(tok.token_to_id(s) == i for i, s in enumerate(CONTROL_TOKENS)):
            return cls(tok)
        return cls(tok, ChatTemplate.load(path))


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
                    show_progress: bool = False, split_digits: bool = False) -> Tokenizer:
    """Train a byte-level BPE on an iterator of strings; any Unicode string round-trips through
    it. split_digits: every digit is a token of its own (with the space before it, if any), as
    LLaMA's tokenizer does: a small model then learns arithmetic digit by digit instead of
    memorising a token per number."""
    added = CONTROL_TOKENS + TOOL_TOKENS
    if vocab_size <= 256 + len(added):
        raise ValueError(f"vocab_size must exceed 256 bytes + {len(added)} added tokens "
                         f"= {256 + len(added)}, got {vocab_size}")
    tok = tokenizers.Tokenizer(models.BPE())
    # GPT-2 style split (words, numbers, punctuation, whitespace) then bytes -> printable unicode
    # chars. DeepSeek uses a finer regex (e.g. digits in groups of 3); this is the simple standard
    # choice.
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = byte_level
    if split_digits:
        digit = pre_tokenizers.Split(tokenizers.Regex(r" ?\p{N}"), behavior="isolated")
        tok.pre_tokenizer = pre_tokenizers.Sequence([digit, byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=show_progress,
        # all 256 bytes are in the vocab even if the corpus never shows them: nothing is ever
        # unknown
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        # listed first, so they get ids 0..6 in order (then the tool tokens, 7..15)
        special_tokens=[AddedToken(s, normalized=False) for s in added],
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # The trainer registers all of its special_tokens as special; un-flag the think tags and tool
    # tokens so decode keeps them. There is no API to change the flag in place, so edit the
    # serialized form.
    state = json.loads(tok.to_str())
    for t in state["added_tokens"]:
        t["special"] = t["content"] in SPECIAL_TOKENS
    return Tokenizer(tokenizers.Tokenizer.from_str(json.dumps(state)))
