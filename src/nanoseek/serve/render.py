"""Model output (markdown) -> safe HTML for the chat app.

Maintained libraries do every part: markdown-it-py parses (CommonMark + tables + strikethrough, raw
HTML off, so a `<script>` in the text stays text), Pygments highlights code fences, latex2mathml
turns $...$, $$...$$, \\(...\\) and \\[...\\] into MathML (which browsers draw natively: no JS on
the page) and nh3 (Ammonia) sanitises the result against an allowlist, as a second wall should a
parser let something through. The page inserts only what `render` returns.
"""

from __future__ import annotations

import html
import re
from functools import cache

import nh3
from latex2mathml.converter import convert as latex_to_mathml
from markdown_it import MarkdownIt
from mdit_py_plugins.dollarmath import dollarmath_plugin
from mdit_py_plugins.texmath import texmath_plugin
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

CODE_CLASS = "hl"  # Pygments token spans carry short classes (k, s, mi ...) under <pre class="hl">
_ALIGN = re.compile(r'style="text-align:(left|center|right)"')

_MATHML = {"math", "semantics", "annotation", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace",
           "msup", "msub", "msubsup", "mfrac", "msqrt", "mroot", "mover", "munder", "munderover",
           "mtable", "mtr", "mtd", "mstyle", "mpadded", "mphantom", "menclose", "merror"}
_MATHML_ATTRS = {"display", "mathvariant", "stretchy", "fence", "separator", "lspace", "rspace",
                 "accent", "accentunder", "columnalign", "rowalign", "width", "height", "depth",
                 "displaystyle", "scriptlevel", "minsize", "maxsize", "movablelimits", "form",
                 "linethickness", "notation", "columnspacing", "rowspacing", "symmetric", "largeop",
                 "encoding"}
# no <img>: a picture in model output would fetch whatever address the model wrote
_TAGS = (nh3.ALLOWED_TAGS - {"img"}) | _MATHML | {"pre", "code", "span", "div", "table", "thead",
                                                 "tbody", "tr", "th", "td", "del"}
_ATTRS = {**{t: set(a) for t, a in nh3.ALLOWED_ATTRIBUTES.items()},
          **{t: _MATHML_ATTRS for t in _MATHML},
          "span": {"class"}, "div": {"class"}, "code": {"class"}, "pre": {"class"},
          "th": {"style"}, "td": {"style"}, "a": {"href", "title"}}


def _fence(content: str, lang: str, attrs) -> str:
    """Code fences: Pygments when it knows the language, else escaped plain text."""
    try:
        lexer = get_lexer_by_name(lang.split()[0]) if lang.strip() else None
    except ClassNotFound:
        lexer = None
    if lexer is None:
        code = html.escape(content)
    else:
        code = highlight(content, lexer, HtmlFormatter(nowrap=True))
    # it starts with <pre, so markdown-it adds none
    return f"<pre class=\"{CODE_CLASS}\"><code>{code}</code></pre>\n"


def _math(display: bool):
    def rule(self, tokens, idx, options, env) -> str:
        tex = tokens[idx].content.strip()
        try:
            out = latex_to_mathml(tex, display="block" if display else "inline")
        except Exception:  # noqa: BLE001 (a formula it cannot parse is shown as its source)
            out = f"<code>{html.escape(tex)}</code>"
        return f"<div class=\"math\">{out}</div>\n" if display else out
    return rule


@cache
def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "highlight": _fence})
    md.enable(["table", "strikethrough"])
    # $...$ as pandoc reads it: no space inside the dollars, no digit after the closing one
    # ("$5 and $6")
    md.use(dollarmath_plugin, allow_space=False, allow_digits=False, double_inline=True)
    md.use(texmath_plugin, delimiters="brackets")  # \( \) and \[ \], which R1-style models write
    for name in ("math_inline", "math_inline_double"):
        md.add_render_rule(name, _math(display=name == "math_inline_double"))
    for name in ("math_block", "math_block_label", "math_block_eqno"):
        md.add_render_rule(name, _math(display=True))
    return md


def _only_alignment(tag: str, attr: str, value: str) -> str | None:
    """The one style markdown writes (table column alignment); any other style is dropped."""
    if attr == "style":
        aligned = value in ("text-align:left", "text-align:center", "text-align:right")
        return value if aligned else None
    return value


def render(markdown: str) -> str:
    """Sanitised HTML of a model's markdown answer. Column alignment becomes a class
    (align-left|center|right): the page's Content-Security-Policy allows no inline style."""
    out = nh3.clean(_parser().render(markdown), tags=_TAGS, attributes=_ATTRS,
                    attribute_filter=_only_alignment, url_schemes={"http", "https", "mailto"},
                    link_rel="noopener noreferrer nofollow")
    return _ALIGN.sub(r'class="align-\1"', out)


@cache
def code_css() -> str:
    """The stylesheet of the highlighted code's classes."""
    return HtmlFormatter(style="default").get_style_defs(f".{CODE_CLASS}")
