"""The chat app as its users see it: a real `nanoseek serve`, driven in headless Chromium (Debian's,
through Playwright). CI installs chromium (.ci/run); elsewhere the browser tests skip when it is
missing."""

import json
import os
import re
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from test_serve import start, wait_idle

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# no sandbox (CI runs as root, where Chromium's sandbox refuses to start), and no background
# networking (a closed network refuses it)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
                 # a DNS-rebinding page: its own name, resolving to this machine
                 "--host-resolver-rules=MAP rebound.test 127.0.0.1"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run must apt-get install chromium")
        pytest.skip("no chromium here (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app(tiny_chat_dir, tmp_path_factory):
    """(base URL, database path) of a server of the tiny chat model."""
    db = tmp_path_factory.mktemp("app") / "conversations.db"
    proc, base = start(tiny_chat_dir, "--max-batch", "4", db=db)
    yield base, db
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def page(browser, app, request):
    # Playwright's wait_for_function evaluates strings, which the page's CSP forbids; the XSS test
    # also runs with the CSP in force, to show the sanitiser alone and the two together both hold
    csp = getattr(request, "param", False)
    context = browser.new_context(viewport={"width": 1100, "height": 750}, bypass_csp=not csp)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app[0])
    page = context.new_page()
    page.errors, page.dialogs = [], []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.accept()))
    yield page
    context.close()
    assert page.errors == []  # no script error in the page, ever


def done(page, count=1):
    """Wait until `count` assistant messages are there and none is streaming."""
    page.wait_for_function(f"document.querySelectorAll('.msg.assistant').length >= {count} && "
                           "!document.querySelector('.msg.assistant.streaming')", timeout=60_000)


def stored(app, cid):
    return httpx.get(f"{app[0]}/api/conversations/{cid}", timeout=10).json()


def current_id(page):
    return re.fullmatch(r"#c=([0-9a-f]+)", page.evaluate("location.hash")).group(1)


# Logs every DOM change to the answer in order (MutationObserver records keep their order even when
# one network read delivers the whole reply): the thinking panel's opening and closing, text added
# to the reasoning and to the answer. With attributeOldValue, a change of `open` says which way it
# went.
RECORD = """() => {
  window.changes = [];
  new MutationObserver((records) => {
    for (const r of records) {
      const t = r.target.nodeType === 1 ? r.target : r.target.parentElement;
      if (r.type === 'attributes' && r.attributeName === 'open' && t.matches('details.thinking'))
        window.changes.push(r.oldValue === null ? 'open' : 'close');
      else if (t.closest('.reasoning') && (r.type === 'characterData' || r.addedNodes.length))
        window.changes.push('reasoning');
      else if (t.closest('.answer') && (r.type === 'characterData' || r.addedNodes.length))
        window.changes.push('answer');
    }
  }).observe(document.querySelector('#messages'), {subtree: true, childList: true,
                                                  characterData: true, attributes: true,
                                                  attributeOldValue: true});
}"""


def test_reasoning_streams_in_an_open_panel_that_closes_when_the_answer_starts(page, app):
    page.goto(app[0])
    # greedy: the tiny model's one reply, reasoning then answer, every run
    page.evaluate("localStorage.setItem('nanoseek.settings', JSON.stringify({temperature: 0}))")
    page.reload()
    page.evaluate(RECORD)
    assert page.is_hidden("#notice")  # a checkpoint of the user's: nothing to warn about
    # nor a promise of skills it may not have
    assert page.get_attribute("#input", "placeholder") == "Message nanoseek"
    assert page.inner_text("#empty").startswith("Write a message.")
    page.fill("#input", "Calculate 12 + 7.")
    page.keyboard.press("Enter")
    done(page)
    changes = page.evaluate("window.changes")
    # open while thinking (the panel is created open: its first change is closing), closed as the
    # answer starts
    assert changes.index("reasoning") < changes.index("close") < changes.index("answer"), changes
    assert "open" not in changes and changes.count("close") == 1, changes
    summary = page.text_content(".msg.assistant summary")
    assert re.fullmatch(r"Thought for \d+ seconds?", summary)
    c = stored(app, current_id(page))
    assert [m["role"] for m in c["messages"]] == ["user", "assistant"]
    assert c["title"] == "Calculate 12 + 7."
    page.wait_for_selector("#title:text-is('Calculate 12 + 7.')")  # the header follows the title
    answer = c["messages"][1]
    assert answer["reasoning"] and answer["content"] and answer["finish"] == "stop"
    assert page.text_content(".msg.assistant .answer").strip() == answer["content"].strip()
    assert page.text_content(".msg.assistant .reasoning") == answer["reasoning"]
    # reload: the conversation is in the list and opens with its messages
    page.reload()
    done(page)
    assert page.inner_text(".conv.current .title") == "Calculate 12 + 7."
    assert page.inner_text(".msg.user .bubble") == "Calculate 12 + 7."
    assert page.text_content(".msg.assistant .reasoning") == answer["reasoning"]
    assert page.eval_on_selector(".msg.assistant details", "d => d.open") is False
    # delete it (the confirm dialog is accepted)
    cid = current_id(page)
    page.click(".conv.current .delete")
    page.wait_for_selector(f".conv[data-id='{cid}']", state="detached")
    assert page.dialogs and "Delete" in page.dialogs[0]
    assert httpx.get(f"{app[0]}/api/conversations/{cid}").status_code == 404
    assert page.is_visible("#empty") and page.evaluate("location.hash") == ""


def test_enter_sends_shift_enter_breaks_the_line_and_the_answer_tools_work(page, app):
    page.goto(app[0])
    page.click("#input")
    page.keyboard.type("Calculate 3 + 4.")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("Be brief.")
    assert page.input_value("#input") == "Calculate 3 + 4.\nBe brief."
    assert page.locator(".msg.user").count() == 0
    page.keyboard.press("Enter")
    done(page)
    assert page.inner_text(".msg.user .bubble") == "Calculate 3 + 4.\nBe brief."
    assert page.input_value("#input") == ""
    cid = current_id(page)
    # copy puts the answer's markdown on the clipboard
    page.click(".msg.assistant.last .copy")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == stored(app, cid)["messages"][1]["content"]
    # regenerate replaces the last answer, here and in the store
    with page.expect_request(lambda r: r.url.endswith("/reply")) as req:
        page.click(".msg.assistant.last .regenerate")
    assert "content" not in json.loads(req.value.post_data)
    done(page)
    assert page.locator(".msg.assistant").count() == 1
    assert [m["role"] for m in stored(app, cid)["messages"]] == ["user", "assistant"]
    # DeepThink off and the settings go into the next request
    page.click("#deepthink")
    assert page.get_attribute("#deepthink", "aria-pressed") == "false"
    page.click("#settings-button")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "1")
    page.click("#settings-save")
    page.fill("#input", "Calculate 5 + 5.")
    with page.expect_request(lambda r: r.url.endswith("/reply")) as req:
        page.keyboard.press("Enter")
    body = json.loads(req.value.post_data)
    assert (body["thinking"], body["temperature"], body["max_tokens"]) == (False, 0, 1)
    done(page, 2)
    assert page.inner_text(".msg.assistant.last .note") == "Cut off at the max-tokens limit."
    assert stored(app, cid)["messages"][-1]["finish"] == "length"
    # rename, then search by the new name and by a message's text
    page.click(".conv.current .rename")
    page.fill(".rename-input", "Sums")
    page.keyboard.press("Enter")
    page.wait_for_selector(".conv.current .title:text-is('Sums')")
    assert page.inner_text("#title") == "Sums" and stored(app, cid)["title"] == "Sums"
    only_sums = ("[...document.querySelectorAll('.conv .title')].map(t => t.textContent).join()"
                 " == 'Sums'")
    page.fill("#search", "sums")
    page.wait_for_function(only_sums)
    page.fill("#search", "5 + 5.")
    page.wait_for_function(only_sums)
    page.fill("#search", "no such words anywhere")
    page.wait_for_function("document.querySelectorAll('.conv').length == 0")


def test_the_shipped_model_says_what_to_ask(browser, tmp_path):
    """The default model does sums, comparisons, sorts and letter counts, and says so instead of
    inviting anything."""
    from nanoseek.infer.bundled import BUNDLED

    if not (BUNDLED / "model.safetensors").is_file() or os.environ.get("NANOSEEK_DEFAULT_MODEL"):
        pytest.skip("the default model is not the shipped one here")
    proc, base = start(None, db=tmp_path / "c.db")
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(base)
        page.wait_for_function("document.querySelector('#input').placeholder.startsWith('Ask')")
        placeholder = page.get_attribute("#input", "placeholder")
        ask = page.inner_text("#empty")
        for skill in ("sum", "comparison", "sort", "letter count"):
            assert skill in placeholder and skill in ask, (placeholder, ask)
        assert "anything" not in placeholder + ask and page.is_hidden("#notice")
    finally:
        context.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_stop_ends_the_generation_and_keeps_what_was_written(browser, tmp_path):
    """An untrained model writes noise: stop it midway, and what it wrote stays, marked stopped."""
    proc, base = start(None, "--max-seq-len", "1024", "--max-batch", "2", db=tmp_path / "c.db",
                       env={"NANOSEEK_CACHE": str(tmp_path / "cache"),
                            "NANOSEEK_DEFAULT_MODEL": "untrained"})
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(base)
        page.wait_for_selector("#notice", state="visible")
        assert "UNTRAINED" in page.inner_text("#notice")  # the default model, labelled as such
        # the noise hits end-of-sentence early now and then, and the untrained model writes 600
        # tokens a second: a reply can be over on the server while the page still shows it coming,
        # and a stop then arrives after the end (the page says "Stopped.", the store holds the whole
        # reply). Either way, try again in a new chat
        saved = {}
        for _ in range(8):
            page.click("#new-chat")
            page.fill("#input", "Tell me a long story.")
            page.keyboard.press("Enter")
            # 200 characters of model text (reasoning + answer, not the panel's labels), or the
            # reply ended
            page.wait_for_function("(() => { const m = document.querySelector('.msg.assistant');"
                                   " if (!m) return false;"
                                   " if (!m.matches('.streaming')) return true;"
                                   " return (m.querySelector('.reasoning')"
                                   ".textContent + m.querySelector('.answer').textContent).length"
                                   " > 200; })()")
            if not page.locator(".streaming").count():
                continue
            page.click("#stop")
            page.wait_for_selector("#send", state="visible")
            assert page.inner_text(".msg.assistant .note") == "Stopped." and page.is_hidden("#stop")
            assert wait_idle(base) == {"status": "ok", "running": 0, "waiting": 0}  # slot freed
            saved = stored((base,), current_id(page))["messages"][1]
            if saved["finish"] == "aborted":
                break
        assert saved.get("finish") == "aborted", saved
        assert 200 < len(saved["reasoning"] + saved["content"])

        def shown():
            return (page.text_content(".msg.assistant .reasoning")
                    + page.text_content(".msg.assistant .answer"))

        before = shown()
        time.sleep(0.3)
        assert shown() == before  # nothing more arrives after the stop
        page.reload()
        page.wait_for_selector(".msg.assistant .note:text-is('Stopped.')")
        assert stored((base,), current_id(page))["messages"][1] == saved
    finally:
        context.close()
        proc.terminate()
        proc.wait(timeout=10)


XSS = ("<script>window.pwned = 'script'</script>\n\n"
       "<img src=x onerror=\"window.pwned = 'img'\">\n\n"
       "[link](javascript:window.pwned='link') <svg onload=\"window.pwned = 'svg'\"></svg>\n\n"
       "```html\n<script>window.pwned = 'code'</script>\n```\n\n$x^2$")


@pytest.mark.parametrize("page", [False, True], ids=["sanitiser-only", "with-csp"], indirect=True)
def test_model_output_with_script_or_handlers_never_runs(page, app):
    """Whatever the model wrote (here put straight into the store, as a model's reply is) shows as
    text."""
    base, db = app
    cid = httpx.post(f"{base}/api/conversations").json()["id"]
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO messages (conversation_id, role, content, created) "
                    "VALUES (?, 'user', ?, 0)",
                    (cid, "<img src=x onerror=\"window.pwned = 'user'\">"))
        con.execute("INSERT INTO messages (conversation_id, role, content, reasoning, thought_s, "
                    "finish, created) VALUES (?, 'assistant', ?, ?, 2, 'stop', 0)",
                    (cid, XSS, "<img src=x onerror=\"window.pwned = 'reasoning'\">"))
        con.execute("UPDATE conversations SET title = ? WHERE id = ?",
                    ("<img src=x onerror=\"window.pwned = 'title'\">", cid))
    page.goto(f"{base}/#c={cid}")
    page.wait_for_selector(".msg.assistant .answer math")
    page.wait_for_timeout(300)  # time for any image error handler to have fired
    assert page.evaluate("window.pwned") is None
    unsafe = "#messages script, #messages img, #messages svg, #conversations img"
    assert page.locator(unsafe).count() == 0
    answer = page.text_content(".msg.assistant .answer")
    assert "<script>window.pwned = 'script'</script>" in answer and "<img src=x onerror" in answer
    # the real markdown still renders
    assert page.locator(".msg.assistant .answer math").count() == 1
    assert page.text_content(".msg.assistant .reasoning").startswith("<img src=x")
    assert page.inner_text(".msg.user .bubble").startswith("<img src=x")
    assert page.inner_text(f".conv[data-id='{cid}'] .title").startswith("<img src=x")
    page.click(f".conv[data-id='{cid}'] .delete")
    page.wait_for_selector(f".conv[data-id='{cid}']", state="detached")


def test_usable_at_phone_width(browser, app):
    context = browser.new_context(viewport={"width": 380, "height": 740}, is_mobile=True,
                                  has_touch=True, bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(app[0])
        # nothing sticks out sideways
        assert page.evaluate("document.documentElement.scrollWidth") <= 380
        sidebar = "document.querySelector('#sidebar').getBoundingClientRect()"
        assert page.evaluate(sidebar + ".right") <= 0
        box = page.locator("#input").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 380 and box["y"] + box["height"] <= 740
        page.click("#menu")
        page.wait_for_function(sidebar + ".left >= 0")
        page.click("#new-chat")  # picking something closes the sidebar again
        page.wait_for_function(sidebar + ".right <= 0")
    finally:
        context.close()


def test_conversations_survive_a_restart_and_a_kill(tiny_chat_dir, tmp_path):
    """Saved conversations are there after a clean restart, and after the server is killed
    mid-reply."""
    db = tmp_path / "c.db"

    def ask(base, cid, text):
        with httpx.stream("POST", f"{base}/api/conversations/{cid}/reply", json={"content": text},
                          timeout=60) as r:
            assert r.status_code == 200
            return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]

    proc, base = start(tiny_chat_dir, db=db)
    cid = httpx.post(f"{base}/api/conversations").json()["id"]
    events = ask(base, cid, "Calculate 1 + 1.")
    assert events[-1]["type"] == "done"
    before = stored((base,), cid)
    proc.terminate()
    proc.wait(timeout=10)

    proc, base = start(tiny_chat_dir, db=db)
    assert stored((base,), cid) == before
    with httpx.stream("POST", f"{base}/api/conversations/{cid}/reply",
                      json={"content": "Calculate 2 + 2."}, timeout=60):
        proc.send_signal(signal.SIGKILL)  # while the reply is being generated and written
    proc.wait(timeout=10)
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)

    proc, base = start(tiny_chat_dir, db=db)
    try:
        after = stored((base,), cid)
        assert after["messages"][:2] == before["messages"]
        # the question was saved before the reply began
        assert after["messages"][2]["content"] == "Calculate 2 + 2."
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_app_api_answers_bad_requests_with_clear_400s_and_404s(app):
    base = app[0]
    cid = httpx.post(f"{base}/api/conversations").json()["id"]

    def error(method, path, status, **kw):
        r = httpx.request(method, base + path, timeout=30, **kw)
        assert r.status_code == status and set(r.json()["error"]) >= {"message", "type"}, r.text
        return r.json()["error"]["message"]

    conversation, reply = f"/api/conversations/{cid}", f"/api/conversations/{cid}/reply"
    assert "no conversation 'nope'" in error("GET", "/api/conversations/nope", 404)
    assert "no conversation" in error("POST", "/api/conversations/nope/reply", 404,
                                      json={"content": "hi"})
    assert "title must be a non-empty string" in error("PATCH", conversation, 400,
                                                       json={"title": " "})
    json_type = {"Content-Type": "application/json"}
    assert "not valid JSON" in error("PATCH", conversation, 400, content=b'{"title": "\\ud800"}',
                                     headers=json_type)
    assert "not valid JSON" in error("POST", reply, 400, content=b"[" * 5000, headers=json_type)
    assert "top_p must be in [0, 1], got 2" in error("POST", reply, 400,
                                                     json={"content": "hi", "top_p": 2})
    assert "content must be a non-empty string" in error("POST", reply, 400, json={"content": ""})
    assert "nothing to answer" in error("POST", reply, 400, json={})
    # a question longer than the context is refused with the numbers, and not kept
    assert "max_seq_len is 256" in error("POST", reply, 400, json={"content": "7 " * 400})
    assert stored(app, cid)["messages"] == []
    httpx.delete(f"{base}/api/conversations/{cid}")


# ---- issue 17: two tabs, refusals, stops, keys; pages elsewhere


def ask(base, cid, text, version=None):
    """A question through the app's API, to the end of its answer; returns the events."""
    body = {"content": text, "temperature": 0, **({"version": version} if version is not None
                                                   else {})}
    with httpx.stream("POST", f"{base}/api/conversations/{cid}/reply", json=body,
                      timeout=60) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]


def test_a_stale_tab_gets_a_409_and_reloads_instead_of_clobbering(browser, app):
    base = app[0]
    cid = httpx.post(f"{base}/api/conversations").json()["id"]
    ask(base, cid, "Calculate 1 + 1.")
    context = browser.new_context(bypass_csp=True)
    try:
        a, b = context.new_page(), context.new_page()
        for tab in (a, b):
            tab.goto(f"{base}/#c={cid}")
            done(tab)
        a.fill("#input", "Calculate 2 + 2.")
        a.keyboard.press("Enter")
        done(a, 2)
        before = stored(app, cid)["messages"]
        assert [m["role"] for m in before] == ["user", "assistant"] * 2
        # tab b still shows one answer: regenerating it would have deleted tab a's
        b.click(".msg.assistant.last .regenerate")
        b.wait_for_selector("#error:text-matches('changed elsewhere')")
        done(b, 2)  # reloaded: both turns
        assert b.locator(".msg.user").all_inner_texts() == ["Calculate 1 + 1.", "Calculate 2 + 2."]
        assert stored(app, cid)["messages"] == before
        # and a question from a stale tab is not lost: it goes back into the box
        a.fill("#input", "Calculate 3 + 3.")
        a.keyboard.press("Enter")
        done(a, 3)
        b.fill("#input", "Calculate 4 + 4.")
        b.keyboard.press("Enter")
        b.wait_for_function("document.querySelectorAll('.msg.user').length == 3 && "
                            "document.querySelector('#input').value == 'Calculate 4 + 4.'")
        assert len(stored(app, cid)["messages"]) == 6
        # the server says so to any client: an old version, or a reply while one is written
        r = httpx.post(f"{base}/api/conversations/{cid}/reply", json={"version": 0}, timeout=10)
        assert r.status_code == 409 and r.json()["error"]["code"] == "conversation_changed"
    finally:
        context.close()


def test_a_refused_question_leaves_the_last_answer_regenerable(page, app):
    page.goto(app[0])
    page.fill("#input", "Calculate 5 + 6.")
    page.keyboard.press("Enter")
    done(page)
    page.fill("#input", "7 " * 400)  # past the context: refused
    page.keyboard.press("Enter")
    page.wait_for_selector("#error:text-matches('max_seq_len')")
    assert page.locator(".msg.user").count() == 1
    assert page.is_visible(".msg.assistant.last .regenerate")


def test_a_message_sent_while_the_conversation_reloads_stays_on_the_page(page, app):
    """Saving the settings reloads the conversation. A message sent before that load comes back
    keeps its exchange on the page: the load is dropped, not drawn over the answer streaming in."""
    page.goto(app[0])
    page.fill("#input", "Calculate 1 + 2.")
    page.keyboard.press("Enter")
    done(page)
    loads, replies = [], []  # held requests: the reload answers first, then the reply
    page.route(re.compile(r".*/api/conversations/[0-9a-f]+$"), lambda r: loads.append(r))
    page.route(re.compile(r".*/reply$"), lambda r: replies.append(r))
    page.click("#settings-button")
    page.click("#settings-save")
    page.fill("#input", "Calculate 2 + 2.")
    page.keyboard.press("Enter")
    for _ in range(100):
        if replies:
            break
        page.wait_for_timeout(50)
    assert loads and replies, "saving reloads the conversation; Enter asks for a reply"
    for route in loads:
        route.continue_()
    page.wait_for_timeout(500)  # the load is answered and handled before the reply starts
    replies[0].continue_()
    done(page, 2)
    assert page.locator(".msg.user").all_inner_texts() == ["Calculate 1 + 2.", "Calculate 2 + 2."]


def test_an_answer_stopped_in_its_reasoning_says_so_after_a_reload(page, app):
    base, db = app
    cid = httpx.post(f"{base}/api/conversations").json()["id"]
    with sqlite3.connect(db) as con:
        for seconds, finish in ((None, "aborted"), (4, "aborted"), (2, "length")):
            con.execute("INSERT INTO messages (conversation_id, role, content, created) "
                        "VALUES (?, 'user', 'Calculate 9 + 9.', 0)", (cid,))
            con.execute("INSERT INTO messages (conversation_id, role, content, reasoning, "
                        "thought_s, finish, created) VALUES (?, 'assistant', '', '9 + 9 is', ?, "
                        "?, 0)", (cid, seconds, finish))
    page.goto(f"{base}/#c={cid}")
    done(page, 3)
    assert page.locator(".msg.assistant summary").all_inner_texts() == [
        "Thought for a while (stopped)", "Thought for 4 seconds (stopped)",
        "Thought for 2 seconds (cut off)"]


def test_saving_a_key_clears_the_error_and_loads_the_list(browser, tiny_chat_dir, tmp_path):
    proc, base = start(tiny_chat_dir, "--api-key", "sesame", "--max-batch", "2",
                       db=tmp_path / "c.db")
    context = browser.new_context(bypass_csp=True)
    try:
        key = {"Authorization": "Bearer sesame"}
        cid = httpx.post(f"{base}/api/conversations", headers=key).json()["id"]
        httpx.patch(f"{base}/api/conversations/{cid}", json={"title": "Kept"}, headers=key)
        page = context.new_page()
        page.goto(base)
        page.wait_for_selector("#settings[open]")
        page.wait_for_selector("#error:text-matches('invalid API key')")
        page.fill("#api-key", "sesame")
        page.click("#settings-save")
        page.wait_for_selector(f".conv[data-id='{cid}'] .title:text-is('Kept')")
        assert page.is_hidden("#error")
    finally:
        context.close()
        proc.terminate()
        proc.wait(timeout=10)


EVIL = """<!doctype html><body>
<form id="f" method="POST" action="{base}/api/conversations" target="sink"
      enctype="text/plain"><input name='{{"a":"' value='"}}'></form>
<iframe name="sink"></iframe>
<script>
(async () => {{
  const tries = [
    fetch("{base}/api/conversations", {{method: "POST", mode: "no-cors"}}),
    fetch("{base}/api/conversations", {{method: "POST", mode: "no-cors",
          headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}}),
    fetch("{base}/v1/completions", {{method: "POST", mode: "no-cors",
          headers: {{"Content-Type": "text/plain"}},
          body: JSON.stringify({{prompt: "1 +", max_tokens: 2}})}}),
  ];
  await Promise.allSettled(tries);
  document.getElementById("f").submit();
  setTimeout(() => {{ window.finished = true; }}, 500);
}})();
</script></body>"""


def test_pages_elsewhere_cannot_drive_the_server(browser, app):
    """A page on another origin (simple requests need no preflight: no-cors fetches, a text/plain
    form), and a DNS-rebinding page (another name for 127.0.0.1), get nothing done."""
    import http.server
    import threading

    base = app[0]
    before = httpx.get(f"{base}/api/conversations", timeout=10).json()["data"]
    def generated():
        text = httpx.get(f"{base}/metrics", timeout=10).text
        return float(re.search(r"^nanoseek_completion_tokens_total (\S+)$", text, re.M).group(1))

    tokens = generated()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            page = EVIL.format(base=base).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://localhost:{evil.server_address[1]}/")
        page.wait_for_function("window.finished === true")
        page.wait_for_timeout(300)
        port = base.rsplit(":", 1)[1]
        rebound = page.goto(f"http://rebound.test:{port}/")
        assert rebound.status == 400
        status = page.evaluate("fetch('/api/conversations', {method: 'POST'}).then(r => r.status)")
        assert status == 400
    finally:
        context.close()
        evil.shutdown()
    assert httpx.get(f"{base}/api/conversations", timeout=10).json()["data"] == before
    assert generated() == tokens
