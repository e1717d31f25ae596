"""What the shipped model says about itself, and what it says to everything outside its skills.

R1's SFT data held 200K non-reasoning samples besides the reasoning ones; nanoseek's small set of
the same kind is greetings, questions about the model, and questions it cannot answer (general
knowledge, writing, code, other mathematics, empty or garbled messages), each answered with a
short, true description of the model and of what it can do, and never with a number (a tiny model
that guesses a number for "What is the capital of France?" is the failure this prevents). Every
reply has a short reasoning for DeepThink on and stands alone with DeepThink off.

`honest(reply)` is the rule that checks such a reply: it names the model and what it can do, and
holds no digit.
"""

from __future__ import annotations

import random
import re

# the four kinds of message outside the skills, and what the model thinks about each
THOUGHTS = {
    "greeting": "The user greets me. I say hello, what I am and what I can do.",
    "identity": "The user asks about me. I say what I am and what I can do.",
    "unclear": "The message is empty or I cannot read it. I say what I can do.",
    "other": "This is not arithmetic, comparing, sorting or counting letters, so I cannot answer "
             "it. I say what I am and what I can do.",
}
OPENINGS = {"greeting": "Hello! ", "identity": "", "unclear": "I didn't understand that. ",
            "other": "Sorry, I can't help with that. "}
SKILLS_SAID = ("I can do arithmetic with +, −, × and parentheses on whole numbers of up to three "
               "digits, compare numbers, sort a short list of numbers and count the letters in a "
               "word, showing my reasoning step by step.")


def describe(size: str = "about a million parameters") -> str:
    """The model's self-description; `size` says how big it is, in words (no digits)."""
    return (f"I'm nanoseek's small reasoning model: a DeepSeek-V3-style model with {size}, "
            f"trained from scratch on a CPU with DeepSeek-R1's recipe. {SKILLS_SAID}")


def reply(kind: str, size: str = "about a million parameters") -> tuple[str, str]:
    """(reasoning, answer) for a message of this kind."""
    return THOUGHTS[kind], OPENINGS[kind] + describe(size)


# a number: digits not part of a name such as V3 or R1
_NUMBER = re.compile(r"(?<![A-Za-z])\d")


def honest(answer: str) -> bool:
    """Whether a reply outside the skills is the honest one: it says it is nanoseek and what it
    can do, and gives no number."""
    text = answer.rsplit("</think>", 1)[-1]
    low = text.lower()
    return "nanoseek" in low and "arithmetic" in low and not _NUMBER.search(text)


# --- training messages outside the skills, by kind (the held-out ones are heldout.py's)

GREETINGS = ["hi", "hello", "hey", "hey there", "hiya", "good morning", "good evening", "howdy",
             "hello nanoseek", "hi there!", "yo", "greetings", "sup", "good afternoon",
             "hello, how are you?", "how are you doing?", "nice to meet you", "thanks!",
             "thank you", "bye", "see you", "ok", "cool", "great, thanks", "hey, what's up?",
             "morning!"]
IDENTITY = ["who are you exactly?", "what are you?", "what's your name?", "what is your name",
            "what can you do?", "what can you help me with?", "are you ChatGPT?",
            "are you DeepSeek?", "who made you?", "who built you?", "how were you trained?",
            "tell me about yourself", "help", "what do you know?", "are you a robot?",
            "are you an AI?", "how big are you?", "how many parameters do you have?",
            "what model are you?", "introduce yourself", "what are your skills?",
            "what are you good at?", "what can't you do?", "what should I ask you?",
            "how smart are you?", "do you have a name?", "who r u", "what is nanoseek?",
            "are you human?", "what were you trained on?", "what kind of model are you?",
            "can you reason?", "list your abilities", "what are you for?"]
PLACES = ["Germany", "Japan", "Italy", "Spain", "Canada", "Brazil", "Egypt", "Kenya", "India",
          "Peru", "Norway", "Chile", "Mexico", "Poland", "Greece", "Turkey", "Vietnam"]
TOPICS = ["black holes", "the Roman Empire", "photosynthesis", "the moon", "volcanoes",
          "democracy", "jazz", "dinosaurs", "the ocean", "cats", "football", "coffee", "trees",
          "electricity", "the internet", "music", "love", "friendship", "rain", "winter"]
OTHER = [
    "What is the capital of {p}?", "Who is the president of {p}?", "What language is spoken in "
    "{p}?", "Tell me about {t}.", "Explain {t}.", "Write a poem about {t}.", "Write a story "
    "about {t}.", "Write a song about {t}.", "Tell me a joke about {t}.", "What do you think of "
    "{t}?", "Can you explain {t} to a child?", "Give me three facts about {t}.",
    "Summarize the history of {p}.", "What's the weather like in {p}?", "Translate 'hello' "
    "into the language of {p}.", "What should I eat tonight?", "Write a Python function that "
    "reverses a list.", "Fix my code: print(hello)", "What is the meaning of life?",
    "Recommend a good book.", "How do I bake bread?", "What time is it?", "What day is today?",
    "Who won the World Cup?", "How far is the sun?", "Why is the sky blue?",
    "What is love?", "Can you draw a cat?", "Tell me a joke.", "Write an email to my boss.",
    "How do I learn to code?", "What is {n} divided by {m}?", "What is {n} / {m}?",
    "What is the square root of {n}?", "What is {n} squared?", "What is {n} to the power of {m}?",
    "Solve x + {n} = {m}.", "What is {n}% of {m}?", "Is {n} a prime number?",
    "What is the derivative of x^{m}?", "Integrate x dx.", "What is pi?",
    "How old is the universe?", "How many people live in {p}?", "When was {p} founded?",
    "Give me {m} ideas for a party.", "Write {m} sentences about {t}.", "What happened in {y}?",
    "Who was born in {y}?", "I am {m} years old, what should I study?", "Do you like {t}?",
    "What is your favourite colour?", "Can you browse the web?", "Open google.com",
    "Play some music.", "Set an alarm for {m} am.", "Write a haiku.", "Tell me a story.",
    "What is the best programming language?", "How do I lose weight?", "Are you conscious?",
    "What is bitcoin?", "Should I buy stocks?", "How do planes fly?", "Name {m} animals.",
    # the skills' words without their problems: still outside them
    "Which is bigger, a {a} or a {b}?", "What is the largest {a} in the world?",
    "Which is the smallest country?", "How many legs does a {a} have?",
    "How many {a}s live in {p}?", "Sort these words: {a}, {b}, tree.", "Sort my files by date.",
    "Count the {a}s in the picture.", "Add {a} to my shopping list.", "Multiply my savings!",
    "What is the sum of all fears?", "Compare {p} and Spain.", "Which is faster, a {a} or a {b}?",
    "How many people are in {p}?", "What's the highest mountain in {p}?", "Count to {m}.",
]
ANIMALS = ["cat", "dog", "horse", "whale", "mouse", "lion", "bird", "snake", "bee", "cow"]
FOREIGN = ["Bonjour, comment ça va ?", "¿Qué hora es?", "Wie geht es dir?", "Ciao!", "你好",
           "こんにちは", "Привет", "Olá, tudo bem?", "Hallo, wer bist du?", "¿Quién eres?"]


def garbled(rng: random.Random) -> str:
    """An empty, unreadable or meaningless message."""
    r = rng.random()
    if r < 0.15:
        return rng.choice(["", " ", "\n", "   "])
    if r < 0.3:
        return rng.choice(["???", "...", "!!!", "?", "hm", "hmm", "asdf", "lol", "k", ":)",
                           "🙂", "👍", "🤔🤔", "...?", "test", "testing", "blah blah"])
    if r < 0.5:
        return str(rng.randint(0, 9999))  # a number alone asks nothing
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 8)))
             for _ in range(rng.randint(1, 5))]
    return " ".join(words)


def out_of_scope(rng: random.Random) -> tuple[str, str]:
    """(kind, message): a training message outside the skills."""
    r = rng.random()
    if r < 0.15:
        kind, text = "greeting", rng.choice(GREETINGS)
    elif r < 0.4:
        kind, text = "identity", rng.choice(IDENTITY)
    elif r < 0.55:
        return "unclear", garbled(rng)
    elif r < 0.6:
        kind, text = "other", rng.choice(FOREIGN)
    else:
        kind = "other"
        a, b = rng.sample(ANIMALS, 2)
        text = rng.choice(OTHER).format(p=rng.choice(PLACES), t=rng.choice(TOPICS),
                                        n=rng.randint(2, 999), m=rng.randint(2, 12),
                                        y=rng.randint(1500, 2020), a=a, b=b)
    s = rng.random()
    if s < 0.3:
        text = text[:1].upper() + text[1:]
    elif s < 0.4:
        text = text.upper()
    elif s < 0.5:
        text = text.rstrip("?.!")
    return kind, text
