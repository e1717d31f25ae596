"""The OpenAPI schema, fuzzed (schemathesis: its examples, coverage and fuzzing phases, valid and
invalid inputs): no request to any route of the in-process app gets a 5xx or FastAPI's 422, crashes
it, or leaves work behind in its engine, and every error is in the OpenAI envelope."""

import itertools
import json
import time

import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402

EXAMPLES = 50  # fuzzing-phase cases per operation, besides the examples and coverage phases' own


@pytest.fixture(scope="module")
def engine(tiny_chat_dir):
    """Small: 64 positions, so that a generated request generates a few dozen tokens at most."""
    import torch

    from nanoseek.infer.engine import Engine

    # one torch thread, as the test servers run (OMP_NUM_THREADS=1): on 2 cores a second one
    # spins against the event loop's thread for the GIL, and a 50-token reply took seconds, not
    # 0.1 s, past the fuzzer's 10 s read timeout under load
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Engine.from_checkpoint(str(tiny_chat_dir), device="cpu", dtype="float32", max_batch=4,
                                 max_seq_len=64, speculative=False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def store():
    from nanoseek.serve.store import ConversationStore

    return ConversationStore(":memory:")


@pytest.fixture(scope="module")
def api(engine, store):
    from nanoseek.serve.app import create_app

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(engine, store=store))
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    max_examples=EXAMPLES, deterministic=True)
    return schema


@pytest.fixture(autouse=True)
def _pytest9_node_id(request):
    """schemathesis' lazy loader (4.32) reads and writes `Node._nodeid`, which pytest 9 no longer
    has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api")
turns = itertools.count()


@schema.parametrize()
@settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_route_fails_on_any_input(case, store):
    # half the time a real conversation, not a 404
    if "cid" in (case.path_parameters or {}) and next(turns) % 2:
        cid = case.path_parameters["cid"] = store.create().id
        store.add_message(cid, "user", "Calculate 12 + 7.")  # something for a reply to regenerate
    response = case.call()
    where = (f"{case.method} {case.formatted_path} {case.body!r}: "
             f"{response.status_code} {response.text[:300]}")
    assert response.status_code < 500 and response.status_code != 422, where
    if response.status_code >= 400:
        err = response.json()["error"]
        assert isinstance(err["message"], str) and isinstance(err["type"], str), where
    elif response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        # its headers were sent: a failure would be an event
        for line in response.text.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                assert "error" not in event and event.get("type") != "error", where


def test_the_fuzzed_engine_is_idle_and_still_serves(api, engine):
    """After all that, every generation has finished or been cancelled, and the engine loop still
    runs."""
    for _ in range(100):
        if not engine.has_unfinished():
            break
        time.sleep(0.05)
    assert not engine.has_unfinished(), list(engine.requests)
    r = api["/v1/completions"]["POST"].Case(body={"prompt": "12 + 7 =", "max_tokens": 2,
                                                  "ignore_eos": True}).call()
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
