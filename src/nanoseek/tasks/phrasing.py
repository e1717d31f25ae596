"""How people ask for the skills: the phrasings the training data uses.

A prompt is a frame ("What is {e}?", "add {a} and {b}") with the problem written into it (symbols
or words, spaced or not), inside an optional politeness wrapper ("Please ...", "Hey, ...",
"... thanks"), sometimes without its final punctuation, sometimes in lower or upper case. Besides
the written frames, compare, sort and letters take frames made of parts (`grammar`): a shape with
its direction word or letter phrase filled in every way the lists below say it. The
held-out set (heldout.py) asks with frames that none of these lists holds, so that evaluating on it
measures what the model understood rather than what it memorised; tests/test_skills.py checks that
the two never meet.
"""

from __future__ import annotations

import itertools
import random

from nanoseek.tasks.skills import TIMES, Node, parse, show


def grammar(shapes: list[str], **parts: list[str]) -> list[str]:
    """Every shape with every choice of the parts it names ({sup}, {dir}, ...): frames made of
    parts, so that each way of saying what is asked ("the lowest", "biggest first", "the letter
    {l}") is met in many sentences, not bound to the one sentence a written list put it in. With
    whole frames only, the model read a new sentence's direction wrong ("from smallest to
    largest" sorted from the largest) and took a question about a word it did not know for a
    message outside its skills."""
    out = []
    for shape in shapes:
        names = [n for n in parts if "{" + n + "}" in shape]
        for choice in itertools.product(*(parts[n] for n in names)):
            frame = shape
            for n, c in zip(names, choice):
                frame = frame.replace("{" + n + "}", c)
            out.append(frame)
    return list(dict.fromkeys(out))


# --- wrappers shared by every skill ({q} is the framed question)
POLITE = ["Please {q}", "Please, {q}", "{q} please", "{q}, please", "Hey, {q}", "Hi! {q}",
          "Hello, {q}", "Hey nanoseek, {q}", "{q} thanks", "{q}, thank you", "{q} thx",
          "Quick one: {q}", "OK so {q}", "Excuse me, {q}", "Sorry to bother you, but {q}",
          "{q} :)", "yo {q}", "Hmm, {q}", "Good morning! {q}", "I have a question. {q}",
          "Math time: {q}", "{q} Thanks a lot!", "{q} I'm stuck", "Can I ask you something? {q}"]
# imperative frames read as a request after these
REQUEST = ["Can you {q}", "Could you {q}", "Would you {q}", "Can you please {q}",
           "Could you please {q}", "I want you to {q}", "Please can you {q}", "pls {q}"]

# --- arithmetic: {e} is the expression; frames marked "!" are imperative
ARITHMETIC = ["What is {e}?", "What's {e}?", "whats {e}", "What is {e}", "How much is {e}?",
              "How much is {e}", "!calculate {e}", "!compute {e}", "!evaluate {e}", "!solve {e}",
              "!work out {e}", "!find {e}", "!find the value of {e}", "What does {e} come to?",
              "{e} = ?", "{e} =?", "{e}=?", "{e} =", "{e}", "{e}?", "!tell me {e}", "!do {e}",
              "What is the result of {e}?", "What's the answer to {e}?", "Quick maths: {e}",
              "Math question: {e}", "{e} is what?", "What is {e} equal to?", "!simplify {e}",
              "How much does {e} make?", "Tell me what {e} is.", "What would {e} be?",
              "Do you know {e}?", "I got a sum for you: {e}", "!help me calculate {e}",
              "What's the value of {e}?", "{e} gives?", "!give me {e}", "Value of {e}?",
              "What is the answer of {e}?", "What do {e} make?", "!find out {e}",
              "Calculate: {e}", "Compute this: {e}", "Evaluate the expression {e}",
              "Solve this one: {e}", "What comes out of {e}?", "{e} - what is it?"]
# two numbers, said in words: {a} and {b}
WORDED = {
    "+": ["!add {a} and {b}", "!add {a} to {b}", "What is the sum of {a} and {b}?",
          "the sum of {a} and {b}", "What do you get if you add {a} and {b}?",
          "What's {a} added to {b}?", "{a} and {b} added together?", "!sum {a} and {b}",
          "How much is {a} and {b} together?"],
    "-": ["!subtract {b} from {a}", "What is {a} take away {b}?", "!take {b} away from {a}",
          "What is the difference between {a} and {b}?", "{a} minus {b} is?",
          "What do you get if you subtract {b} from {a}?", "How much is {b} less than {a}?",
          "!take away {b} from {a}", "!deduct {b} from {a}"],
    "*": ["!multiply {a} by {b}", "!multiply {a} and {b}", "What is the product of {a} and {b}?",
          "the product of {a} and {b}", "What's {a} multiplied by {b}?",
          "What do you get if you multiply {a} by {b}?", "{a} lots of {b}?",
          "How much is {a} groups of {b}?", "!times {a} by {b}"],
}
# how the operators are written inside {e}
SYMBOLS = {"+": ["+"], "-": ["-", "-", "−"], "*": ["*", "*", "x", TIMES, "X"]}
WORDS = {"+": ["plus", "plus", "add", "and"], "-": ["minus", "minus", "take away", "less"],
         "*": ["times", "times", "multiplied by", "x"]}

COMPARE = {
    True: ["Which is larger, {l}?", "Which is bigger: {l}?", "Which number is greater, {l}?",
           "What is the largest of {l}?", "What's the biggest number among {l}?", "max of {l}",
           "!find the maximum of {l}", "Which is more, {l}?", "{l}: which is bigger?",
           "!pick the larger number: {l}", "{l}, which is greater?", "Which is higher, {l}?",
           "What is the maximum of {l}?", "Largest of {l}?", "!tell me which is biggest: {l}",
           "Which one is the largest: {l}?", "Is {l} bigger?", "greatest of {l}",
           "Which of these is the biggest: {l}?", "!find the largest number in {l}",
           "!compare {l} and give the larger"],
    False: ["Which is smaller, {l}?", "Which is less: {l}?", "Which number is lower, {l}?",
            "What is the smallest of {l}?", "What's the least number among {l}?", "min of {l}",
            "!find the minimum of {l}", "Which is fewer, {l}?", "{l}: which is smaller?",
            "!pick the smaller number: {l}", "{l}, which is lesser?", "Which is lowest, {l}?",
            "What is the minimum of {l}?", "Smallest of {l}?",
            "!tell me which is smallest: {l}", "Which one is the smallest: {l}?",
            "Is {l} smaller?", "least of {l}", "Which of these is the smallest: {l}?",
            "!find the smallest number in {l}", "!compare {l} and give the smaller"],
}
# the same shapes for either direction: a superlative and a comparative of each
SUPERLATIVE = {True: ["largest", "biggest", "greatest", "highest", "maximum", "max"],
               False: ["smallest", "least", "lowest", "minimum", "min", "tiniest"]}
COMPARATIVE = {True: ["larger", "bigger", "greater", "higher"],
               False: ["smaller", "lower", "lesser", "less"]}
COMPARE_SHAPES = [
    "Which is the {sup}: {l}?", "Which of {l} is {cmp}?", "Which of {l} is the {sup}?",
    "Which one is {cmp}, {l}?", "Which number is the {sup} among {l}?",
    "What is the {sup} number in {l}?", "What's the {sup} of {l}?", "!find the {sup} number: {l}",
    "!give me the {sup} of {l}", "!pick the {sup} of {l}", "!select the {cmp} number from {l}",
    "!choose the {sup} one from {l}", "!show the {sup} value in {l}",
    "{l}: which one is the {sup}?", "{l} - which is {cmp}?", "Of {l}, which is {cmp}?",
    "Among {l}, which number is the {sup}?", "{sup} number in {l}?",
    "!return the {sup} value from {l}", "Which value is {cmp}: {l}?",
    "Can you say which is {cmp}, {l}?", "Given {l}, which is the {sup}?",
    "Which would be {cmp}: {l}?", "{l} -> {sup}?", "!from {l}, pick the {sup}"]
for _largest in (True, False):
    COMPARE[_largest] += grammar(COMPARE_SHAPES, sup=SUPERLATIVE[_largest],
                                 cmp=COMPARATIVE[_largest])

SORT = {
    True: ["!sort {l}", "!sort {l} in ascending order", "!sort these numbers: {l}",
           "!put {l} in order from smallest to largest", "!order {l} from least to greatest",
           "!arrange {l} in increasing order", "sort ascending: {l}", "{l} sorted?",
           "{l} in ascending order?", "!list {l} from lowest to highest",
           "What is {l} sorted from smallest to biggest?", "!put these in order: {l}",
           "!sort the list {l}", "ascending order of {l}", "!rearrange {l} smallest first",
           "!order the numbers {l} ascending", "Sorted order of {l}?", "!sort {l} low to high"],
    False: ["!sort {l} in descending order", "!order {l} from largest to smallest",
            "!arrange {l} in decreasing order", "sort descending: {l}",
            "!put {l} in order from biggest to smallest", "{l} in descending order?",
            "!list {l} from highest to lowest", "What is {l} sorted from largest to smallest?",
            "!sort the list {l} in reverse order", "descending order of {l}",
            "!rearrange {l} largest first", "!order the numbers {l} descending",
            "!sort {l} high to low", "!sort {l} from greatest to least"],
}
ORDER = {True: ["in ascending order", "in increasing order", "from smallest to largest",
                 "from smallest to biggest", "from lowest to highest", "from least to greatest",
                 "from low to high", "low to high", "smallest first", "lowest first",
                 "least to greatest", "small to big", "ascending"],
         False: ["in descending order", "in decreasing order", "from largest to smallest",
                 "from biggest to smallest", "from highest to lowest", "from greatest to least",
                 "from high to low", "high to low", "largest first", "biggest first",
                 "greatest to least", "big to small", "descending", "in reverse order"]}
SORT_SHAPES = ["!sort {l} {dir}", "!order {l} {dir}", "!arrange {l} {dir}", "!rank {l} {dir}",
               "!list {l} {dir}", "!sort these numbers {dir}: {l}",
               "!put these numbers in order, {dir}: {l}", "!write {l} {dir}", "{l} {dir}?",
               "{l} sorted {dir}?", "{dir}: {l}",
               "What is {l} sorted {dir}?", "!give me {l} {dir}", "!reorder {l} {dir}",
               "!organize {l} {dir}", "!sort, {dir}: {l}"]
for _ascending in (True, False):
    SORT[_ascending] += grammar(SORT_SHAPES, dir=ORDER[_ascending])

LETTERS = ["How many {l}'s are in {w}?", "How many times does {l} appear in {w}?",
           "!count the letter {l} in {w}", "How many {l}s in {w}",
           "!count the {l}'s in the word {w}",
           "In the word {w}, how many {l}'s are there?", "number of {l} in {w}?",
           "How often does the letter {l} occur in {w}?", "How many letters {l} does {w} have?",
           "{w}: how many times {l}?", "!count how many {l} are in {w}",
           "How many {l} are there in {w}?", "Does {w} have any {l}? How many?",
           "How many {l}'s does the word {w} contain?", "{l} count in {w}?"]
LETTERS += grammar(
    ["How many {many} {inw}?", "How many times does {one} {occur} in {w}?",
     "!count {these} {inside}", "!tell me how many {many} are in {w}",
     "What is the number of {many} in {w}?",
     "Number of {many} in {w}?", "{w}, how many {many} does it have?",
     "The word {w} has how many {many}?", "Take the word {w}. How many {many} are in it?",
     "{w} -> number of {many}?", "!find how many {many} {inw}"],
    many=["{l}'s", "{l}s", "letter {l}s", "letters {l}", "times the letter {l}"],
    inw=["in {w}", "are in {w}", "are there in {w}", "in the word {w}", "does {w} contain",
         "does the word {w} have", "can you find in {w}", "are in the word {w}"],
    one=["{l}", "the letter {l}", "the character {l}", "letter {l}"],
    occur=["appear", "occur", "show up", "come up"],
    these=["the {l}'s", "the {l}s", "the letter {l}", "every {l}", "all the {l}'s", "each {l}"],
    inside=["in {w}", "in the word {w}", "inside {w}"])


def _frame(frame: str, rng: random.Random, **fields: str) -> str:
    """A frame filled in and wrapped: imperative frames ("!...") become requests or sentences."""
    imperative = frame.startswith("!")
    q = frame.lstrip("!").format(**fields)
    if imperative:
        r = rng.random()
        if r < 0.35:
            q = rng.choice(REQUEST).format(q=q) + "?"
        else:
            q = q[0].upper() + q[1:] + ("." if r < 0.7 else "")
    elif rng.random() < 0.4:
        wrap = rng.choice(POLITE)
        if not wrap.startswith("{q}") and not q.startswith("I "):
            q = q[0].lower() + q[1:]  # "Hey, what is ...", not "Hey, What is ..."
        q = wrap.format(q=q)
    return q


def _surface(text: str, rng: random.Random) -> str:
    """Punctuation and case as people type: sometimes no final mark, lower or upper case."""
    if rng.random() < 0.2:
        text = text.rstrip("?.!")
    r = rng.random()
    if r < 0.08:
        text = text.lower()
    elif r < 0.14:
        text = text.upper()
    return text


def _expression(node: Node, rng: random.Random) -> str:
    """The expression as a person might type it: symbols (spaced or not) or operator words."""
    r = rng.random()
    if r < 0.3:
        words = {op: rng.choice(WORDS[op]) for op in "+-*"}
        return show(node, words=words)
    sym = {op: rng.choice(SYMBOLS[op]) for op in "+-*"}
    text = show(node, words=sym)
    if r < 0.5 and "x" not in sym.values() and "X" not in sym.values():
        text = text.replace(" ", "")
    return text


def _numbers(numbers: list[int], rng: random.Random, last: str = " and ") -> str:
    """A list said the ways people say one."""
    s = [str(x) for x in numbers]
    r = rng.random()
    if len(s) == 2 and r < 0.4:
        return f"{s[0]} or {s[1]}"
    if r < 0.6:
        return ", ".join(s[:-1]) + last + s[-1]
    if r < 0.85:
        return ", ".join(s)
    if r < 0.93:
        return " ".join(s)
    return "[" + ", ".join(s) + "]"


def phrase(skill: str, inst: dict, rng: random.Random) -> str:
    """A training prompt for an instance of a skill."""
    if skill == "arithmetic":
        node = parse(inst["expression"])
        if not isinstance(node, int) and all(isinstance(x, int) for x in node[1:]) \
                and rng.random() < 0.35:
            op, a, b = node
            q = _frame(rng.choice(WORDED[op]), rng, a=str(a), b=str(b))
        else:
            q = _frame(rng.choice(ARITHMETIC), rng, e=_expression(node, rng))
    elif skill == "compare":
        last = rng.choice([" and ", " or "])
        q = _frame(rng.choice(COMPARE[inst["largest"]]), rng,
                   l=_numbers(inst["numbers"], rng, last))
    elif skill == "sort":
        q = _frame(rng.choice(SORT[inst["ascending"]]), rng, l=_numbers(inst["numbers"], rng))
    elif skill == "letters":
        letter = inst["letter"]
        letter = rng.choice([letter, letter, letter.upper(), f"'{letter}'", f'"{letter}"'])
        word = inst["word"]
        word = rng.choice([word, word, word, word.capitalize(), f"'{word}'", f'"{word}"'])
        q = _frame(rng.choice(LETTERS), rng, l=letter, w=word)
    else:
        raise ValueError(f"unknown skill {skill!r}")
    return _surface(q, rng)


def frames() -> dict[str, list[str]]:
    """Every training frame of every skill, without the imperative mark: what the held-out set
    must not use."""
    out = {"arithmetic": ARITHMETIC + [f for fs in WORDED.values() for f in fs],
           "compare": COMPARE[True] + COMPARE[False], "sort": SORT[True] + SORT[False],
           "letters": LETTERS}
    return {k: [f.lstrip("!") for f in v] for k, v in out.items()}
