"""Per-sample streaming of generated token ids into text: UTF-8-safe detokenizing, stop strings, and
the split of R1's output into `reasoning_content` and `content` at its `<think>` / `</think>` tags.

The engine owns one `TextStream` per sample and pushes each sampled id through it:

    Detokenizer -> StopMatcher -> ReasoningParser

Every stage holds back only what the next characters could still change (half a UTF-8 character, the
start of a stop string, the start of a tag, trailing whitespace before a `</think>`) and emits the
rest at once. Each stage's output is the same however its input is chunked, so a streamed response
concatenates to exactly the non-streamed one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers.decoders import DecodeStream

from nanoseek.tokenizer import THINK_END, THINK_START, Tokenizer


class Detokenizer:
    """Token ids in, text out, never a broken UTF-8 character in between.

    A byte-level BPE splits a multi-byte character (é, 日, 🙂) over several tokens; decoding one
    token at a time would emit U+FFFD halves. `tokenizers.decoders.DecodeStream` holds such bytes
    back (step() returns None) until the character completes; we only add `flush()` for the end of
    generation.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        # Ids pushed since the last non-empty emission. DecodeStream only emits at a character
        # boundary, so decoding these alone gives exactly what it still holds back.
        self._pending: list[int] = []

    def push(self, token_id: int) -> str:
        self._pending.append(int(token_id))
        text = self._stream.step(self.tokenizer.tok, int(token_id))
        # None: an incomplete character, or a token that decodes to nothing (a skipped special)
        if text is None:
            return ""
        self._pending.clear()
        return text

    def flush(self) -> str:
        """What is still held back at the end: a truncated character decodes to U+FFFD, as decode()
        would.

        DecodeStream also holds back a genuine trailing U+FFFD (it cannot tell it from a half
        character), so this is where that one comes out too.
        """
        text = ""
        if self._pending:
            text = self.tokenizer.decode(self._pending, self.skip_special_tokens)
        self._pending.clear()
        self._stream = DecodeStream(skip_special_tokens=self.skip_special_tokens)
        return text


def _partial_suffix(text: str, targets: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `targets` (0 if
    none)."""
    longest = max((len(t) for t in targets), default=0)
    tail = text[len(text) - min(len(text), longest - 1):]
    if not any(t[0] in tail for t in targets):  # the common case: no target can start here
        return 0
    for k in range(min(len(text), longest - 1), 0, -1):
        tail = text[-k:]
        if any(t.startswith(tail) and len(t) > k for t in targets):
            return k
    return 0


class StopMatcher:
    """Cuts the text at the first stop string, which may span many pushes; the stop text is never
    emitted.

    "First" is the occurrence that *completes* first reading left to right (ties: the one that
    starts first), which is when generation would stop if the text arrived one character at a time.
    Defining it this way makes the result independent of chunking: with stops ["abcd", "bc"], text
    "abcd" gives "a" whether it arrives whole or as "abc" + "d".
    """

    def __init__(self, stop: Sequence[str] | str = ()):
        # the OpenAI API allows a single string
        stops = [stop] if isinstance(stop, str) else list(stop)
        for s in stops:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty str, got {s!r} in stop={stops!r}")
        self.stop = tuple(dict.fromkeys(stops))
        self.stopped = False
        self._held = ""  # a suffix that may still grow into a stop string

    def push(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stop:
            return text, False
        buf = self._held + text
        # (end, start) of each stop's first occurrence; the earliest end wins, then the earliest
        # start.
        hits = [(i + len(s), i) for s in self.stop if (i := buf.find(s)) >= 0]
        if hits:
            self.stopped, self._held = True, ""
            return buf[: min(hits)[1]], True
        # No stop in `buf`, so none can start before its longest stop-prefix suffix: the rest is
        # safe.
        keep = _partial_suffix(buf, self.stop)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """End of generation without a stop: the held-back prefix was just text after all."""
        text, self._held = ("" if self.stopped else self._held), ""
        return text


def prompt_leaves_reasoning_open(prompt_text: str) -> bool:
    """True iff generation starts inside a think block: the prompt's last `<think>` is after its
    last `</think>`.

    R1's generation prompt ends with `<｜Assistant｜><think>\\n` (True); with thinking off it ends
    with an empty, closed block (False); earlier turns' reasoning is stripped, so only the
    generation prompt decides.
    """
    return prompt_text.rfind(THINK_START) > prompt_text.rfind(THINK_END)


class ReasoningParser:
    """Splits generated text into (reasoning, content) at `<think>` / `</think>`; the tags go to
    neither.

    In content we look only for `<think>`, in reasoning only for `</think>`; the other tag is
    literal text of the current channel. R1 writes `reasoning\\n</think>\\n\\nanswer`, so a block's
    trailing whitespace is dropped at its `</think>` and the content's leading whitespace right
    after it is dropped. A block the model opens itself (a foreign template's prompt does not)
    starts `<think>\\n`, as R1's prompt does: that newline is the tag's, so it goes to neither, and
    the reasoning starts as it does after R1's prompt. Output that never closes its block is all
    reasoning (a truncated response: the API shows it as reasoning_content).
    """

    def __init__(self, in_reasoning: bool):
        self.in_reasoning = in_reasoning
        # Undecided text: a possible partial tag, and in reasoning also the whitespace before it,
        # which is dropped if `</think>` follows and emitted if more reasoning does.
        self._held = ""
        # just after `</think>`: content's leading whitespace is dropped
        self._lstrip_content = False
        # just after a generated `<think>`: the newline that follows it is dropped
        self._opened = False

    def _content(self, text: str) -> str:
        if self._lstrip_content:
            text = text.lstrip()
            self._lstrip_content = not text
        return text

    def push(self, text: str) -> tuple[str, str]:
        buf = self._held + text
        reasoning, content = [], []
        while True:
            if self._opened and buf:
                buf, self._opened = buf.removeprefix("\n"), False
            tag = THINK_END if self.in_reasoning else THINK_START
            i = buf.find(tag)
            if i < 0:
                break
            before, buf = buf[:i], buf[i + len(tag) :]
            if self.in_reasoning:
                reasoning.append(before.rstrip())  # the block's trailing whitespace ends here
                self._lstrip_content = True
            else:
                content.append(self._content(before))
                self._opened = True
            self.in_reasoning = not self.in_reasoning
        # No complete tag left: hold back what could be the start of one, emit the rest.
        keep = _partial_suffix(buf, (tag,))
        ready, self._held = buf[: len(buf) - keep], buf[len(buf) - keep :]
        if self.in_reasoning:
            body = ready.rstrip()
            # trailing whitespace waits for what follows
            self._held = ready[len(body) :] + self._held
            reasoning.append(body)
        else:
            content.append(self._content(ready))
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """End of text: held-back text was not a tag after all, and an unclosed block keeps its
        whitespace."""
        held, self._held = self._held, ""
        return (held, "") if self.in_reasoning else ("", self._content(held))


@dataclass
class StreamDelta:
    text: str  # raw emitted text: think tags included, stop strings excluded
    reasoning: str
    content: str
    stopped: bool  # a stop string was hit: the sample is finished


class TextStream:
    """One sample's token ids -> text, reasoning and content deltas (Detokenizer -> StopMatcher ->
    ReasoningParser).

    Pass `in_reasoning=prompt_leaves_reasoning_open(prompt_text)`. After a stop string every push
    returns an empty delta with stopped=True; call finish() once at the end (EOS or length) to
    release held-back text.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] | str = (),
                 skip_special_tokens: bool = True, in_reasoning: bool = False):
        self.detokenizer = Detokenizer(tokenizer, skip_special_tokens)
        self.stop_matcher = StopMatcher(stop)
        self.parser = ReasoningParser(in_reasoning)
        self.text = self.reasoning = self.content = ""  # everything emitted so far
        self.stopped = self.finished = False

    def _emit(self, text: str, stopped: bool, last: bool) -> StreamDelta:
        reasoning, content = self.parser.push(text)
        if last:  # nothing more will come: the parser's held-back text is final
            r, c = self.parser.flush()
            reasoning, content = reasoning + r, content + c
            self.finished = True
        self.stopped = stopped
        self.text += text
        self.reasoning += reasoning
        self.content += content
        return StreamDelta(text, reasoning, content, stopped)

    def push(self, token_id: int) -> StreamDelta:
        if self.finished:
            return StreamDelta("", "", "", self.stopped)
        text, stopped = self.stop_matcher.push(self.detokenizer.push(token_id))
        return self._emit(text, stopped, last=stopped)

    def push_all(self, ids: Sequence[int]) -> StreamDelta:
        """push() of every id, then finish(), as one delta: the same text, since no stage depends on
        how its input is chunked, but one stop-string and one tag scan instead of one per token."""
        if self.finished:
            return StreamDelta("", "", "", self.stopped)
        decoded = "".join(map(self.detokenizer.push, ids)) + self.detokenizer.flush()
        text, stopped = self.stop_matcher.push(decoded)
        if not stopped:
            text += self.stop_matcher.flush()
        return self._emit(text, stopped, last=True)

    def finish(self) -> StreamDelta:
        if self.finished:
            return StreamDelta("", "", "", self.stopped)
        # The detokenizer's tail may itself complete a stop string.
        text, stopped = self.stop_matcher.push(self.detokenizer.flush())
        if not stopped:
            text += self.stop_matcher.flush()
        return self._emit(text, stopped, last=True)
