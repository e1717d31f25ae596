"""Model markdown -> safe HTML: rendered by the libraries, and nothing that can run survives."""

from html.parser import HTMLParser

import pytest

from nanoseek.serve.render import code_css, render

ATTACKS = [
    "<script>window.pwned = 1</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![x](javascript:alert(1))",
    "<svg onload=alert(1)>",
    "<iframe src=//evil.example>",
    '<div style="background:url(javascript:alert(1))">x</div>',
    "```html\n<script>alert(1)</script>\n```",
    "$<script>alert(1)</script>$",
    r"\[\href{javascript:alert(1)}{x}\]",
    "<math><mtext><img src=x onerror=alert(1)></mtext></math>",
    "<details open ontoggle=alert(1)>",
    "<<script>script>alert(1)<</script>/script>",
]


class Elements(HTMLParser):
    """The (tag, attributes) of every element a browser would build from the HTML."""

    def __init__(self, html: str):
        super().__init__()
        self.found: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))


@pytest.mark.parametrize("text", ATTACKS)
def test_nothing_executable_survives(text):
    out = render(text)
    for tag, attrs in Elements(out).found:
        assert tag not in {"script", "iframe", "svg", "object", "embed", "style", "img", "details",
                           "form"}, out
        assert not any(a.startswith("on") for a in attrs), out  # no event handlers
        href = attrs.get("href")
        assert href is None or href.startswith(("http:", "https:", "mailto:")), out
        assert "style" not in attrs, out


def test_markdown_code_and_math_are_rendered():
    out = render("# Title\n\n**bold** and `x = 1`\n\n- a\n- b\n\n"
                 "| n | sq |\n|--:|---|\n| 2 | 4 |\n\n"
                 "```python\ndef f(x):\n    return x * 2\n```\n\n"
                 "Inline $a^2 + b^2$, display:\n\n$$\\frac{1}{2}$$\n\n"
                 "and \\(\\sqrt{x}\\)\n\n\\[x_1\\]\n\n"
                 "[docs](https://example.org)")
    assert "<h1>Title</h1>" in out and "<strong>bold</strong>" in out
    assert "<code>x = 1</code>" in out
    assert "<li>a</li>" in out and '<th class="align-right">n</th>' in out
    assert '<pre class="hl"><code><span class="k">def</span>' in out  # Pygments token classes
    assert out.count("<math") == 4 and "<msqrt>" in out
    assert '<math display="block"><mrow><mfrac>' in out
    assert '<a href="https://example.org" rel="noopener noreferrer nofollow">docs</a>' in out
    assert ".hl .k" in code_css()


def test_prices_are_not_math_and_bad_tex_is_shown_as_source():
    assert "<math" not in render("it costs $5 and $6 today")
    out = render("$\\frac{1}{$")
    assert "<math" not in out and "frac" in out


def test_images_are_dropped():
    """A picture in model output would fetch whatever address the model wrote."""
    assert "<img" not in render("![cat](https://example.org/cat.png)")
