"""The model `nanoseek chat` and `nanoseek serve` use when given no checkpoint.

The model nanoseek ships (made by `nanoseek pipeline --export src/nanoseek/assets/model`, its
README.md says how), $NANOSEEK_DEFAULT_MODEL, or, in a tree without it, an untrained `tiny` model
built once so that the commands still start.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from nanoseek.checkpoint import save_model
from nanoseek.files import cache_dir
from nanoseek.model.model import Transformer

UNTRAINED_NOTE = ("no trained model is bundled with this nanoseek yet: using an UNTRAINED `tiny` "
                  "model (random weights, so its replies are noise). Pass a checkpoint directory "
                  "from `nanoseek train` instead.")
# What the shipped model can be asked (its skills, tasks/skills.py): the chat app invites these, not
# "anything", since everything else gets only its honest "I can't do that" reply
# (examples it answers right at temperature 0, DeepThink on and off: README's table)
SHIPPED_HINT = ("Ask a sum, a comparison, a sort or a letter count, e.g. \"What is 80 + 29?\", "
                "\"Which is bigger, 58 or 85?\", \"How many o's are in balloon?\"")

BUNDLED = Path(__file__).parent.parent / "assets" / "model"


def default_checkpoint() -> tuple[Path, bool]:
    """(directory, trained) of the model `chat` and `serve` use without a checkpoint:
    $NANOSEEK_DEFAULT_MODEL if set (a checkpoint directory), else the one nanoseek ships inside the
    package (BUNDLED). With NANOSEEK_DEFAULT_MODEL=untrained, or in a tree without BUNDLED, an
    untrained `tiny` model with a tokenizer trained on a built-in arithmetic corpus, built once
    (seeded, so always the same) in $NANOSEEK_CACHE."""
    choice = os.environ.get("NANOSEEK_DEFAULT_MODEL")
    if choice and choice != "untrained":
        return Path(choice), True
    if choice != "untrained" and (BUNDLED / "config.json").is_file():
        return BUNDLED, True
    from nanoseek.model.config import get_preset
    from nanoseek.tokenizer import render_chat, render_completion, train_tokenizer

    path = cache_dir() / "untrained-tiny"
    if not (path / "tokenizer.json").is_file():
        corpus = [render_chat([{"role": "user", "content": f"Calculate {a} + {b}."}])
                  + render_completion(f"{a} + {b} = {a + b}", str(a + b))
                  for a in range(40) for b in range(40)]
        tok = train_tokenizer(corpus, vocab_size=512)
        gen = torch.random.fork_rng()
        with gen:
            torch.manual_seed(0)
            model = Transformer(get_preset("tiny"))
        save_model(model, path, tokenizer=tok)
    return path, False
