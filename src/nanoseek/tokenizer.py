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
ROLES = ("system", "user", "assistant")
_LONG_TEXT = 4096  # characters; a longer text is encoded without holding the GIL

# The R1 chat template. It and render_chat below must stay in lockstep (tests compare them through
# transformers). System texts go first, untagged, joined by a blank line as DeepSeek's template
# does; earlier assistant turns keep only the answer after their last </think>; the generation
# prompt opens the reasoning block, or with thinking=False an empty, already-closed one.
CHAT_TEMPLATE = (r"""{%- for m in messages -%}
  {%- if m['role'] not in ['system', 'user', 'assistant'] or m['content'] is not string -%}
    {{- raise_exception('message ' ~ loop.index0
                        ~ ': need role system/user/assistant and str content') -}}
  {%- endif -%}
{%- endfor -%}
{{- '<｜begin▁of▁sentence｜>' -}}
{{- messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | join('\n\n') -}}
{%- for m in messages -%}
  {%- if m['role'] == 'user' -%}
    {{- '<｜User｜>' + m['content'] -}}
  {%- elif m['role'] == 'assistant' -%}
    {{- '<｜Assistant｜>' + m['content'].split('</think>')[-1].lstrip()"""
    r""" + '<｜end▁of▁sentence｜>' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<｜Assistant｜><think>\n' -}}
  {%- if thinking is defined and not thinking -%}{{- '\n</think>\n\n' -}}{%- endif -%}
{%- endif -%}""")


def _check_messages(messages: list[dict]) -> None:
    if not messages:
        raise ValueError("messages is empty")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"message {i}: role must be one of {ROLES}, got {m!r}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message {i}: content must be a str, got {m.get('content')!r}")


def _chat_pieces(messages: list[dict], add_generation_prompt: bool,
                 thinking: bool) -> list[tuple[str, bool]]:
    """The rendered chat as (text, is_control) pieces: control tokens the template writes, and
    message text."""
    _check_messages(messages)
    out = [(BOS, True), ("\n\n".join(m["content"] for m in messages if m["role"] == "system"),
                         False)]
    for m in messages:
        if m["role"] == "user":
            out += [(USER, True), (m["content"], False)]
        elif m["role"] == "assistant":
            # Reasoning of earlier turns is dropped (and any reasoning_content key ignored): R1 is
            # trained to see only final answers in its context, which also keeps multi-turn prompts
            # short.
            out += [(ASSISTANT, True), (m["content"].split(THINK_END)[-1].lstrip(), False),
                    (EOS, True)]
    if add_generation_prompt:
        out += [(ASSISTANT, True), (THINK_START, True), ("\n", False)]
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
    text, which the reasoning parser reads as well."""

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
        self.user_id = self.assistant_id = None
        self.pad_id = ids["pad"] if ids["pad"] is not None else self.eos_id
        bos = template.add_bos_token and ids["bos"] is not None
        self.prompt_start = template.bos_token if bos else ""
        self.stop_ids = frozenset(i for i in (self.eos_id, *template.stop_token_ids)
                                  if i is not None)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, s: str) -> int | None:
        return self.tok.token_to_id(s)

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
                ids += self.encode_text(text) + [self.tok.token_to_id(piece)]
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
    if vocab_size <= 256 + len(CONTROL_TOKENS):
        raise ValueError(f"vocab_size must exceed 256 bytes + {len(CONTROL_TOKENS)} control tokens "
                         f"= {256 + len(CONTROL_TOKENS)}, got {vocab_size}")
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
        # listed first, so they get ids 0..6 in order
        special_tokens=[AddedToken(s, normalized=False) for s in CONTROL_TOKENS],
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # The trainer registers all of its special_tokens as special; un-flag the think tags so decode
    # keeps them. There is no API to change the flag in place, so edit the serialized form.
    state = json.loads(tok.to_str())
    for t in state["added_tokens"]:
        t["special"] = t["content"] in SPECIAL_TOKENS
    return Tokenizer(tokenizers.Tokenizer.from_str(json.dumps(state)))
