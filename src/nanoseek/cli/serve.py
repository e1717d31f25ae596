"""`nanoseek serve`: the chat app and the DeepSeek/OpenAI-compatible API over one engine."""

from __future__ import annotations

import argparse
import os

from nanoseek.cli.common import BadArgs, add_engine_flags, engine_from, port
from nanoseek.files import data_dir


def add_parsers(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve", help="a chat app in the browser and a DeepSeek/OpenAI-compatible API, reasoning "
                      "included",
        description="A chat app at / (reasoning streamed in a collapsible panel, conversations "
                    "kept in SQLite), and the API: POST /v1/chat/completions (streaming or not, "
                    "reasoning_content beside content, n, stop, seed, logprobs, logit_bias, a "
                    "thinking switch, prefix completion, usage with prompt-cache hits), POST "
                    "/v1/completions (FIM with suffix, given FIM tokens), GET /v1/models, GET "
                    "/health, GET /metrics. One engine batches all requests. Binds 127.0.0.1 "
                    "unless --host says otherwise.",
        epilog="example: nanoseek serve ckpt/ --port 8000, then open http://127.0.0.1:8000/ or "
               "point any OpenAI client at base_url http://127.0.0.1:8000/v1")
    serve.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                       help="a checkpoint directory (model + tokenizer); default: the model "
                            "nanoseek ships")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=port, default=8000, help="TCP port, 1..65535 (default 8000)")
    serve.add_argument("--model-name", default="nanoseek",
                       help="the model id clients ask for (default nanoseek)")
    serve.add_argument("--api-key",
                       help="require this Bearer key on /v1 routes (or set NANOSEEK_API_KEY)")
    serve.add_argument("--max-queue", type=int, default=256,
                       help="requests allowed to wait for a slot; more get 429 with Retry-After "
                            "(default 256)")
    serve.add_argument("--timeout", type=float, default=600.0,
                       help="seconds a request may run (default 600)")
    serve.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                       help="allow browser calls from this origin, e.g. http://localhost:3000; "
                            "repeatable (default: none: only the chat app's own page)")
    serve.add_argument("--allowed-host", action="append", metavar="NAME",
                       help="a host name clients may reach the server under (the Host header), "
                            "e.g. chat.example.com; repeatable (default: on a loopback --host, "
                            "127.0.0.1, localhost and ::1 only; else any)")
    serve.add_argument("--client-timeout", type=float, default=20.0, metavar="S",
                       help="seconds a client may take to send a request's headers, and again "
                            "its body (default 20)")
    serve.add_argument("--db", default=str(data_dir() / "conversations.db"), metavar="PATH",
                       help="SQLite file of the chat app's conversations (default: %(default)s)")
    serve.add_argument("--reasoning-alias", action="store_true",
                       help="also send reasoning_content as `reasoning`, for clients that read "
                            "that name")
    add_engine_flags(serve, max_batch=16)
    serve.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from nanoseek.serve.app import create_app
    from nanoseek.serve.guard import LOOPBACK_NAMES, loopback, slow_client_protocol
    from nanoseek.serve.http import ServerConfig
    from nanoseek.serve.store import ConversationStore, StoreError

    keys = tuple(k for k in (args.api_key or os.environ.get("NANOSEEK_API_KEY"),) if k)
    if args.client_timeout <= 0:
        raise BadArgs(f"--client-timeout must be > 0 seconds, got {args.client_timeout}")
    hosts = tuple(h.lower() for h in args.allowed_host or ())
    if hosts or loopback(args.host):
        hosts += LOOPBACK_NAMES if loopback(args.host) else (args.host.lower(),)
    try:
        store = ConversationStore(args.db)
    except (StoreError, OSError) as e:
        raise BadArgs(f"--db {args.db}: {e}") from None
    engine = engine_from(args)
    config = ServerConfig(model_name=args.model_name, api_keys=keys,
                          reasoning_alias=args.reasoning_alias, max_queue=args.max_queue,
                          timeout_s=args.timeout, cors_origins=tuple(args.cors_origin or ()),
                          allowed_hosts=hosts, client_timeout_s=args.client_timeout,
                          notice=getattr(args, "notice", ""),
                          hint=getattr(args, "hint", ""))
    app = create_app(engine, config, store)
    url = f"http://{args.host}:{args.port}"
    print(f"nanoseek: serving {args.checkpoint or 'the default model'} as {args.model_name!r}: "
          f"chat app at {url}/ , API at {url}/v1 ({engine.max_batch} slots"
          f"{', API key required' if keys else ''}; conversations in {args.db})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                http=slow_client_protocol(args.client_timeout))
    return 0
