"""The skills of the model nanoseek ships: problems, their worked reasoning, and their checkers.

Four verifiable skills, each an instance (a small JSON-able dict), a worked trace short and regular
enough for a model of a million parameters to learn, the answer, and a checker of a reply:

- arithmetic: +, - and x on whole numbers of up to three digits, 2 to 4 terms, with parentheses;
- compare: the largest or smallest of 2 to 4 numbers;
- sort: 3 to 5 numbers in ascending or descending order;
- letters: how many times a letter occurs in a word.

Traces work digit by digit, as a person does on paper: a column sum writes the digit and carries,
and the digits written so far follow each arrow ("7 + 8 = 15 -> 5; 4 + 2 = 6, + 1 = 7 -> 75"), so
every step reads only the line it is on. Each token asks one thing: a table fact, then its carry
added; a subtraction's digits, then whether to borrow. (A two-fact token, "4 × 8 + 5 = 37", was the
commonest wrong step of the model's products: the base model got 25 of 160 held-out problems right
with it and 56 without it.) A product of two multi-digit numbers becomes one product per
digit of the multiplier and column sums of those. The model sees no calculator: what it learns is
this procedure, which is why a model this small can multiply three-digit numbers at all.

How the problems are asked (many phrasings) is phrasing.py's; the held-out set is heldout.py's.
"""

from __future__ import annotations

import ast
import random
import re
from typing import Any

Node = Any  # an int, or (op, left, right) with op in "+-*"
PREC = {"+": 1, "-": 1, "*": 2}
TIMES = "×"
SKILLS = ("arithmetic", "compare", "sort", "letters")
MAX_VALUE = 10**6  # every intermediate result stays below this: a product of two 3-digit numbers


# ---------------------------------------------------------------------------------------------
# expressions


def parse(expression: str) -> Node:
    """An expression of whole numbers with + - * (or x, ×) and parentheses, as a tree."""
    text = expression.replace(TIMES, "*").replace("−", "-")

    def conv(n: ast.AST) -> Node:
        if isinstance(n, ast.Constant) and type(n.value) is int:
            return n.value
        if isinstance(n, ast.BinOp) and type(n.op) in (ast.Add, ast.Sub, ast.Mult):
            op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}[type(n.op)]
            return (op, conv(n.left), conv(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            v = conv(n.operand)
            if isinstance(v, int):
                return -v
        raise ValueError(f"not an arithmetic expression of whole numbers: {expression!r}")

    try:
        return conv(ast.parse(text, mode="eval").body)
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None


def value(node: Node) -> int:
    if isinstance(node, int):
        return node
    op, a, b = node
    x, y = value(a), value(b)
    return x + y if op == "+" else x - y if op == "-" else x * y


def show(node: Node, times: str = TIMES, words: dict[str, str] | None = None) -> str:
    """The expression written out with as few parentheses as its tree needs (a right operand of
    the same precedence keeps them, so that show and parse round-trip). A negative number is
    parenthesised unless it comes first."""
    sym = words or {"+": "+", "-": "-", "*": times}

    def go(n: Node, first: bool) -> str:
        if isinstance(n, int):
            return str(n) if n >= 0 or first else f"({n})"
        op, a, b = n
        left = go(a, first)
        if not isinstance(a, int) and PREC[a[0]] < PREC[op]:
            left = f"({go(a, True)})"
        right = go(b, False)
        if not isinstance(b, int) and PREC[b[0]] <= PREC[op]:
            right = f"({go(b, True)})"
        return f"{left} {sym[op]} {right}"

    return go(node, True)


def canonical(expression: str) -> str:
    """The instance key of an arithmetic problem: its tree written in ASCII."""
    return show(parse(expression), times="*")


def _random_tree(rng: random.Random, terms: int, numbers: list[int]) -> Node:
    if terms == 1:
        return numbers.pop()
    left = rng.randint(1, terms - 1)
    op = rng.choices("+-*", weights=(3, 3, 2))[0]
    return (op, _random_tree(rng, left, numbers), _random_tree(rng, terms - left, numbers))


def _number(rng: random.Random, max_digits: int = 3) -> int:
    digits = rng.randint(1, max_digits)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _fits(node: Node) -> bool:
    """Every intermediate result below MAX_VALUE, and at most two products."""
    products = 0

    def go(n: Node) -> int:
        nonlocal products
        if isinstance(n, int):
            return n
        x, y = go(n[1]), go(n[2])
        products += n[0] == "*"
        v = x + y if n[0] == "+" else x - y if n[0] == "-" else x * y
        if abs(v) >= MAX_VALUE:
            raise OverflowError
        return v

    try:
        go(node)
    except OverflowError:
        return False
    return products <= 2


def random_expression(rng: random.Random, terms: int | None = None) -> str:
    """An arithmetic instance: 2 to 4 whole numbers of 1 to 3 digits with + - * and the
    parentheses its random tree needs (canonical ASCII)."""
    while True:
        n = terms or rng.choices((2, 3, 4), weights=(5, 3, 2))[0]
        tree = _random_tree(rng, n, [_number(rng) for _ in range(n)])
        if _fits(tree):
            return show(parse(show(tree, times="*")), times="*")


def random_product(rng: random.Random) -> str:
    """A product with a three-digit factor and a factor of 1 to 3 digits, either way round."""
    a, b = rng.randint(100, 999), _number(rng)
    return f"{a} * {b}" if rng.random() < 0.5 else f"{b} * {a}"


# ---------------------------------------------------------------------------------------------
# worked arithmetic: column sums and differences, products digit by digit


def _digits(x: int) -> list[int]:
    """Digits from the ones up."""
    return [int(c) for c in reversed(str(x))]


def column_add(x: int, y: int) -> str:
    if x < 10 and y < 10:
        return f"{x} + {y} = {x + y}"
    dx, dy = _digits(x), _digits(y)
    n = max(len(dx), len(dy))
    carry, written, steps = 0, "", []
    for i in range(n):
        terms = [d[i] for d in (dx, dy) if i < len(d)] + ([carry] if carry else [])
        s = sum(terms)
        col = str(terms[0]) if len(terms) == 1 else " + ".join(map(str, terms[:2])) + (
            f" = {terms[0] + terms[1]}, + {terms[2]} = {s}" if len(terms) == 3 else f" = {s}")
        written = (str(s) if i == n - 1 else str(s % 10)) + written
        carry = s // 10
        steps.append(f"{col} → {written}")
    return f"{x} + {y}: " + "; ".join(steps)


def column_sub(x: int, y: int) -> str:
    """x - y for x >= y >= 0: borrowing columns; leading zeros are dropped at the end. A column
    states its digits before it decides to borrow ("4 - 9: borrow, 14 - 9 = 5"), so that the
    decision reads two digits just written, not the first token of the column."""
    if x < 10:
        return f"{x} - {y} = {x - y}"
    dx, dy = _digits(x), _digits(y)
    borrow, written, steps = 0, "", []
    for i, xi in enumerate(dx):
        yi = dy[i] if i < len(dy) else None
        need = xi - borrow < (yi or 0)
        r = xi + 10 * need - (yi or 0) - borrow
        if yi is None and not borrow:
            col = str(xi)
        else:
            rest = (f" - {yi}" if yi is not None else "") + (" - 1" if borrow else "")
            col = f"{xi}{rest}: borrow, 1{xi}{rest} = {r}" if need else f"{xi}{rest} = {r}"
        written = str(r) + written
        borrow = int(need)
        steps.append(f"{col} → {written}")
    line = f"{x} - {y}: " + "; ".join(steps)
    return line + (f" = {x - y}" if written != str(x - y) else "")


def times_digit(x: int, d: int) -> str:
    """x times a single digit d, column by column with carries. The digit's product is written
    before its carry is added ("4 × 8 = 32, + 5 = 37"): one table fact, then one small sum, where
    "4 × 8 + 5 = 37" asks both of one token (the commonest wrong step of the model's products)."""
    if x < 10 or d < 2:
        return f"{x} {TIMES} {d} = {x * d}"
    carry, written, steps = 0, "", []
    dx = _digits(x)
    for i, xi in enumerate(dx):
        p = xi * d + carry
        col = f"{xi} {TIMES} {d} = {xi * d}" + (f", + {carry} = {p}" if carry else "")
        written = (str(p) if i == len(dx) - 1 else str(p % 10)) + written
        carry = p // 10
        steps.append(f"{col} → {written}")
    return f"{x} {TIMES} {d}: " + "; ".join(steps)


def _work(x: int) -> tuple[int, int]:
    """What multiplying by x costs: its non-zero digits, then its length."""
    return sum(d != 0 for d in _digits(x)), len(str(x))


def long_multiply(x: int, y: int) -> list[str]:
    """x * y for x, y >= 0: one product per non-zero digit of the multiplier (the factor with fewer
    non-zero digits, else the shorter, else the right one), then their column sums."""
    if x < 10 and y < 10 or min(x, y) < 2:
        return [f"{x} {TIMES} {y} = {x * y}"]
    lines = []
    m, n = y, x
    if _work(x) < _work(y):
        m, n = x, y
        lines.append(f"{x} {TIMES} {y} = {y} {TIMES} {x}")
    parts = [(d, 10**p) for p, d in enumerate(_digits(m)) if d]
    if len(parts) > 1:
        lines.append(f"{n} {TIMES} {m} = " + " + ".join(f"{n} {TIMES} {d * p}" for d, p in parts))
    total = None
    for d, p in parts:
        if d == 1:
            line = f"{n} {TIMES} {p} = {n * p}" if p > 1 else f"{n} {TIMES} 1 = {n}"
        else:
            line = times_digit(n, d)
            if p > 1:
                line += f", so {n} {TIMES} {d * p} = {n * d * p}"
        lines.append(line)
        if total is not None:
            lines.append(column_add(total, n * d * p))
        total = n * d * p if total is None else total + n * d * p
    return lines


def _signed(a: int, op: str, b: int) -> tuple[list[str], int]:
    """The lines of one operation on whole numbers of either sign: a sign rule brings it to
    whole numbers, then the column work."""
    sym = {"+": "+", "-": "-", "*": TIMES}[op]
    if a >= 0 and b >= 0:
        if op == "+":
            return [column_add(a, b)], a + b
        if op == "*":
            return long_multiply(a, b), a * b
        if a >= b:
            return [column_sub(a, b)], a - b
        rule = f"{a} - {b} = -({b} - {a})"
        return [rule, column_sub(b, a), f"so {a} - {b} = {a - b}"], a - b
    said = f"{a} {sym} ({b})" if b < 0 else f"{a} {sym} {b}"
    if op == "*":
        lines = long_multiply(abs(a), abs(b))
        if (a < 0) != (b < 0):
            rule = f"{said} = -({abs(a)} {TIMES} {abs(b)})"
        else:
            rule = f"{said} = {abs(a)} {TIMES} {abs(b)}"
        return [rule, *lines, f"so {said} = {a * b}"], a * b
    if op == "-" and b < 0:
        lines, v = _signed(a, "+", -b)
        return [f"{said} = {a} + {-b}", *lines], v
    if op == "+" and a < 0 <= b:
        lines, v = _signed(b, "-", -a)
        return [f"{said} = {b} - {-a}", *lines], v
    if op == "+" and b < 0 <= a:
        lines, v = _signed(a, "-", -b)
        return [f"{said} = {a} - {-b}", *lines], v
    # both negative, or a negative minus a whole number: the magnitudes add
    x, y = abs(a), abs(b)
    return [f"{said} = -({x} + {y})", column_add(x, y), f"so {said} = {-(x + y)}"], -(x + y)


def _reduce_first(node: Node) -> tuple[Node, list[str]]:
    """The tree with its first operation on two numbers (leftmost, innermost) worked out."""
    op, a, b = node
    if isinstance(a, int) and isinstance(b, int):
        lines, v = _signed(a, op, b)
        return v, lines
    if not isinstance(a, int):
        a, lines = _reduce_first(a)
        return (op, a, b), lines
    b, lines = _reduce_first(b)
    return (op, a, b), lines


def arithmetic_trace(expression: str) -> tuple[str, str]:
    """(reasoning, answer): the expression, then one operation at a time, each followed by what is
    left of the expression."""
    node = parse(expression)
    lines = [show(node)]
    while not isinstance(node, int):
        node, work = _reduce_first(node)
        lines += work + [f"= {show(node)}"]
    return "\n".join(lines), str(node)


# ---------------------------------------------------------------------------------------------
# compare, sort, letters


def _versus(a: int, b: int, largest: bool) -> tuple[str, int]:
    """One comparison: by length, else digit by digit from the left; the winner."""
    if a == b:
        return f"{a} vs {b}: equal → {a}", a
    sa, sb = str(a), str(b)
    if len(sa) != len(sb):
        why = f"{len(sa)} digits vs {len(sb)}"
    else:
        i = next(i for i in range(len(sa)) if sa[i] != sb[i])
        same = [f"{sa[j]} = {sb[j]}" for j in range(i)]
        rel = "<" if sa[i] < sb[i] else ">"
        why = ", ".join(same + [f"{sa[i]} {rel} {sb[i]}"])
    win = max(a, b) if largest else min(a, b)
    return f"{a} vs {b}: {why} → {win}", win


def compare_trace(numbers: list[int], largest: bool) -> tuple[str, str]:
    """What is asked, restated ("largest of 85, 69"), then one comparison a line. The question's
    direction is read once, into the first line, where every later line finds it a few tokens
    back: without it a line wrote "8 > 6" and then took 69 for the largest."""
    which = "largest" if largest else "smallest"
    best, lines = numbers[0], [f"{which} of {', '.join(map(str, numbers))}"]
    for x in numbers[1:]:
        line, best = _versus(best, x, largest)
        lines.append(line)
    lines.append(f"{which}: {best}")
    return "\n".join(lines), str(best)


def sort_trace(numbers: list[int], ascending: bool) -> tuple[str, str]:
    """Selection sort: the smallest (largest) of what is left, one line each."""
    left, done, lines = list(numbers), [], []
    which = "smallest" if ascending else "largest"
    while len(left) > 1:
        pick = min(left) if ascending else max(left)
        done.append(pick)
        lines.append(f"{', '.join(map(str, left))}: {which} {pick} → {', '.join(map(str, done))}")
        left.remove(pick)
    done.append(left[0])
    lines.append(f"{left[0]} → {', '.join(map(str, done))}")
    return "\n".join(lines), ", ".join(map(str, done))


def letters_trace(word: str, letter: str) -> tuple[str, str]:
    """The word spelt out, each match numbered as it is met."""
    n, out = 0, []
    for ch in word.lower():
        if ch == letter:
            n += 1
            out.append(f"{ch} ({n})")
        else:
            out.append(ch)
    return f"{' '.join(out)}\n{letter}: {n}", str(n)


# ---------------------------------------------------------------------------------------------
# instances and checkers, one interface for every skill


def solve(skill: str, inst: dict) -> tuple[str, str]:
    """(reasoning, answer) of an instance."""
    if skill == "arithmetic":
        return arithmetic_trace(inst["expression"])
    if skill == "compare":
        return compare_trace(inst["numbers"], inst["largest"])
    if skill == "sort":
        return sort_trace(inst["numbers"], inst["ascending"])
    if skill == "letters":
        return letters_trace(inst["word"], inst["letter"])
    raise ValueError(f"unknown skill {skill!r}; the skills are {', '.join(SKILLS)}")


def key(skill: str, inst: dict) -> str:
    """What makes two instances the same problem, however they are phrased."""
    if skill == "arithmetic":
        return f"arithmetic {canonical(inst['expression'])}"
    if skill == "compare":
        return f"compare {'max' if inst['largest'] else 'min'} {inst['numbers']}"
    if skill == "sort":
        return f"sort {'asc' if inst['ascending'] else 'desc'} {inst['numbers']}"
    return f"letters {inst['letter']} {inst['word'].lower()}"


_WORDS: list[str] | None = None


def words() -> list[str]:
    """Words of 4 to 9 letters for the letters skill: reasoning-gym's word list."""
    global _WORDS
    if _WORDS is None:
        from importlib.resources import files

        text = files("reasoning_gym.data").joinpath("words3to10.txt").read_text()
        _WORDS = sorted({w for w in text.split() if w.isalpha() and w.islower()
                         and w.isascii() and 4 <= len(w) <= 9})
    return _WORDS


def random_instance(skill: str, rng: random.Random) -> dict:
    if skill == "arithmetic":
        if rng.random() < 0.25:  # products of a three-digit number: the hardest, so more of them
            return {"expression": random_product(rng)}
        return {"expression": random_expression(rng)}
    if skill == "compare":
        n = rng.choices((2, 3, 4), weights=(6, 2, 1))[0]
        numbers = [_number(rng, 4) for _ in range(n)]
        if rng.random() < 0.3:  # near misses: same length, same leading digits
            base = numbers[0]
            numbers = [max(0, base + rng.randint(-30, 30)) for _ in range(n)]
        return {"numbers": numbers, "largest": rng.random() < 0.5}
    if skill == "sort":
        n = rng.randint(3, 5)
        return {"numbers": [_number(rng) for _ in range(n)], "ascending": rng.random() < 0.6}
    if skill == "letters":
        word = rng.choice(words())
        # mostly a letter it has, sometimes one it has not
        letter = rng.choice(word if rng.random() < 0.85 else "abcdefghijklmnopqrstuvwxyz")
        return {"word": word, "letter": letter}
    raise ValueError(f"unknown skill {skill!r}; the skills are {', '.join(SKILLS)}")


_INT = re.compile(r"(?<![A-Za-z\d])-?\d+")  # a number, not the digits of a name such as R1


def final_line(reply: str) -> str:
    """The last non-empty line of a reply's answer (after its reasoning): where every skill's
    answer is, with DeepThink on or off."""
    tail = reply.rsplit("</think>", 1)[-1].strip()
    return tail.splitlines()[-1] if tail else ""


def check(skill: str, inst: dict, reply: str) -> float:
    """1.0 when the reply's answer is right: the last number of its last line (arithmetic,
    compare, letters), or exactly the sorted numbers (sort)."""
    found = [int(x) for x in _INT.findall(final_line(reply).replace("−", "-"))]
    if skill == "sort":
        want = sorted(inst["numbers"], reverse=not inst["ascending"])
        return float(found == want)
    if not found:
        return 0.0
    _, answer = solve(skill, inst)
    return float(found[-1] == int(answer))
