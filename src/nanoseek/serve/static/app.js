// nanoseek chat: talks to /api (conversations, stored server-side) and streams replies as SSE.
// Model text reaches the page two ways only: as textContent (reasoning, the unrendered tail of the
// answer) or as the server's sanitised HTML (render.py). Nothing else is ever put in innerHTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
// version: the conversation's version this page shows; a reply names it, and the server answers
// 409 if another tab has moved the conversation on since
// shown: counts what took over the messages view (a conversation opened, a new chat, a message
// sent), so that a conversation still loading when the user sends does not replace the exchange
const state = { id: null, version: 0, busy: null, thinking: true, shown: 0 };
// max_tokens null: as many as the model's context leaves
const settings = Object.assign({ temperature: 0.6, top_p: 0.95, max_tokens: null, key: "" },
  JSON.parse(localStorage.getItem("nanoseek.settings") || "{}"));
state.thinking = localStorage.getItem("nanoseek.thinking") !== "off";

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json" };
  if (settings.key) headers.Authorization = "Bearer " + settings.key;
  const r = await fetch(path, { ...options, headers });
  if (!r.ok) {
    let message = r.statusText;
    try { message = (await r.json()).error.message; } catch (e) { /* not our envelope */ }
    if (r.status === 401) openSettings("This server needs an API key.");
    const error = new Error(message);
    error.status = r.status;
    throw error;
  }
  return r;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

// ---------------------------------------------------------------- conversations

async function loadList() {
  const q = $("#search").value.trim();
  const { data } = await (await api("/api/conversations" + (q ? "?q=" + encodeURIComponent(q) : ""))).json();
  const list = $("#conversations");
  list.replaceChildren(...data.map((c) => {
    const li = document.createElement("li");
    li.className = "conv" + (c.id === state.id ? " current" : "");
    if (c.id === state.id) $("#title").textContent = c.title;  // e.g. named by its first question
    li.dataset.id = c.id;
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = c.title;
    title.tabIndex = 0;
    title.onclick = () => openConversation(c.id);
    title.onkeydown = (e) => { if (e.key === "Enter") openConversation(c.id); };
    const rename = button("rename", "✎", "Rename", () => startRename(li, c));
    const del = button("delete", "×", "Delete", () => removeConversation(c));
    li.append(title, rename, del);
    return li;
  }));
}

function button(cls, text, label, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls;
  b.textContent = text;
  b.title = label;
  b.setAttribute("aria-label", label);
  b.onclick = onclick;
  return b;
}

function startRename(li, c) {
  const input = document.createElement("input");
  input.className = "rename-input";
  input.value = c.title;
  li.replaceChildren(input);
  input.focus();
  input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    if (save && input.value.trim() && input.value !== c.title) {
      await api("/api/conversations/" + c.id, { method: "PATCH", body: JSON.stringify({ title: input.value }) })
        .catch((e) => showError(e.message));
      if (c.id === state.id) $("#title").textContent = input.value.trim();
    }
    loadList();
  };
  input.onkeydown = (e) => {
    if (e.key === "Enter") finish(true);
    if (e.key === "Escape") finish(false);
  };
  input.onblur = () => finish(true);
}

async function removeConversation(c) {
  if (!confirm(`Delete "${c.title}"? This cannot be undone.`)) return;
  try {
    await api("/api/conversations/" + c.id, { method: "DELETE" });
  } catch (e) { showError(e.message); }
  if (c.id === state.id) newChat();
  loadList();
}

function newChat() {
  stop();
  state.shown++;
  state.id = null;
  state.version = 0;
  history.replaceState(null, "", location.pathname);
  $("#title").textContent = "nanoseek";
  $("#messages").replaceChildren(emptyNote);
  document.body.classList.remove("sidebar-open");
  $("#input").focus();
  loadList();
}

async function openConversation(id) {
  stop();
  const shown = ++state.shown;
  let c;
  try {
    c = await (await api("/api/conversations/" + encodeURIComponent(id))).json();
  } catch (e) {
    showError(e.message);
    return shown === state.shown ? newChat() : undefined;
  }
  if (shown !== state.shown) return;  // sent to, or left, while it loaded
  state.id = c.id;
  state.version = c.version;
  history.replaceState(null, "", "#c=" + c.id);
  $("#title").textContent = c.title;
  const box = $("#messages");
  box.replaceChildren();
  for (const m of c.messages) {
    if (m.role === "user") box.append(userMessage(m.content));
    else box.append(assistantMessage(m).el);
  }
  if (!c.messages.length) box.append(emptyNote);
  markLast();
  document.body.classList.remove("sidebar-open");
  loadList();
  scrollDown(true);
}

// ---------------------------------------------------------------- messages

function make(tag, cls, ...children) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  e.append(...children);
  return e;
}

function userMessage(text) {
  const bubble = make("div", "bubble");
  bubble.textContent = text;
  return make("div", "msg user", bubble);
}

function thoughtLabel(s) {
  const n = Math.max(1, Math.round(s));
  return `Thought for ${n} second${n === 1 ? "" : "s"}`;
}

// The thinking panel's title for a reply that ended (seconds: how long it thought, or null), the
// same live and after a reload: one stopped or cut off in its reasoning says so.
function endedLabel(seconds, hasAnswer, finish) {
  const thought = seconds != null ? thoughtLabel(seconds) : "Thought for a while";
  if (hasAnswer) return thought;
  if (finish === "aborted") return thought + " (stopped)";
  if (finish === "length") return thought + " (cut off)";
  return "Thinking";
}

// One assistant message; `m` is a stored message, or undefined while streaming.
function assistantMessage(m) {
  const summary = make("summary");
  const reasoning = make("div", "reasoning");
  const details = make("details", "thinking", summary, reasoning);
  const rendered = make("div");
  const tail = make("span", "tail");
  const answer = make("div", "answer markdown", rendered, tail);
  const note = make("div", "note");
  const actions = make("div", "actions");
  const el = make("div", "msg assistant");
  const view = { el, details, summary, reasoning, rendered, tail, note, content: "", thought: null };
  actions.append(
    button("copy", "Copy", "Copy the answer", async (e) => {
      await navigator.clipboard.writeText(view.content);
      e.target.textContent = "Copied";
      setTimeout(() => { e.target.textContent = "Copy"; }, 1500);
    }),
    button("regenerate", "Regenerate", "Answer again", () => regenerate()));
  el.append(details, answer, note, actions);
  if (m) {
    reasoning.textContent = m.reasoning;
    details.hidden = !m.reasoning;
    summary.textContent = endedLabel(m.thought_s, !!m.content, m.finish);
    rendered.innerHTML = m.html;  // sanitised by the server
    view.content = m.content;
    if (m.finish === "aborted") note.textContent = "Stopped.";
    if (m.finish === "length") note.textContent = "Cut off at the max-tokens limit.";
  } else {
    details.open = true;
    details.hidden = !state.thinking;
    summary.textContent = "Thinking…";
    el.classList.add("streaming");
  }
  return view;
}

function markLast() {
  document.querySelectorAll(".msg.assistant.last").forEach((e) => e.classList.remove("last"));
  const all = document.querySelectorAll(".msg.assistant");
  if (all.length && !all[all.length - 1].nextElementSibling) all[all.length - 1].classList.add("last");
}

function scrollDown(force) {
  const box = $("#messages");
  if (force || box.scrollHeight - box.scrollTop - box.clientHeight < 120) box.scrollTop = box.scrollHeight;
}

// ---------------------------------------------------------------- sending and streaming

async function send(text) {
  if (state.busy || !text.trim()) return;
  showError("");
  try {
    if (!state.id) {
      const c = await (await api("/api/conversations", { method: "POST" })).json();
      state.id = c.id;
      state.version = c.version;
      history.replaceState(null, "", "#c=" + c.id);
    }
  } catch (e) { return showError(e.message); }
  emptyNote.remove();
  const asked = userMessage(text);
  $("#messages").append(asked);
  $("#input").value = "";
  autosize();
  if (!(await stream({ content: text }))) {  // refused (e.g. too long): the question was not kept
    asked.remove();
    markLast();  // the answer before it is the last again (and can be regenerated)
    if (!$("#input").value) $("#input").value = text;
  }
}

async function regenerate() {
  if (state.busy) return;
  const last = document.querySelector(".msg.assistant.last");
  if (last) last.remove();
  await stream({});
}

// Streams one answer into a new assistant message; false if the server refused the request outright.
async function stream(extra) {
  state.shown++;
  const view = assistantMessage();
  $("#messages").append(view.el);
  scrollDown(true);
  const controller = new AbortController();
  state.busy = controller;
  setBusy(true);
  const started = performance.now();
  let accepted = false;
  const body = { ...extra, thinking: state.thinking, temperature: settings.temperature, top_p: settings.top_p,
                 max_tokens: settings.max_tokens, version: state.version };
  try {
    const r = await api(`/api/conversations/${state.id}/reply`,
                        { method: "POST", body: JSON.stringify(body), signal: controller.signal });
    accepted = true;
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of block.split("\n")) {
          if (line.startsWith("data: ")) onEvent(view, JSON.parse(line.slice(6)), started);
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") {
      view.note.textContent = "Stopped.";
      view.finish = "aborted";
    } else {
      if (!view.content && !view.reasoning.textContent) view.el.remove();
      if (e.status === 409) await openConversation(state.id);  // another tab moved it on
      showError(e.message);
    }
  } finally {
    view.el.classList.remove("streaming");
    if (view.thought === null && view.reasoning.textContent) {
      view.summary.textContent = endedLabel((performance.now() - started) / 1000, false,
                                            view.finish || "aborted");
    }
    if (!view.reasoning.textContent) view.details.hidden = true;
    state.busy = null;
    setBusy(false);
    markLast();
    loadList();
  }
  return accepted;
}

function onEvent(view, ev, started) {
  if (ev.type === "start") {
    state.version = ev.version;
  } else if (ev.type === "reasoning") {
    view.details.hidden = false;
    view.reasoning.append(ev.text);
  } else if (ev.type === "content") {
    if (view.thought === null) {  // the answer starts: the thinking panel folds away
      view.thought = ev.thought_s ?? (performance.now() - started) / 1000;
      view.summary.textContent = thoughtLabel(view.thought);
      view.details.open = false;
    }
    view.content += ev.text;
    if (ev.html !== undefined) {
      view.rendered.innerHTML = ev.html;  // sanitised by the server
      view.tail.textContent = "";
    } else {
      view.tail.append(ev.text);
    }
  } else if (ev.type === "done") {
    view.rendered.innerHTML = ev.message.html;  // sanitised by the server
    view.tail.textContent = "";
    view.el.dataset.id = ev.message.id;
    view.finish = ev.message.finish;
    if (ev.message.finish === "length") view.note.textContent = "Cut off at the max-tokens limit.";
  } else if (ev.type === "error") {
    showError(ev.message);
  }
  scrollDown(false);
}

function stop() {
  if (state.busy) state.busy.abort();
}

function setBusy(busy) {
  $("#send").hidden = busy;
  $("#stop").hidden = !busy;
  document.body.classList.toggle("busy", busy);
}

// ---------------------------------------------------------------- settings

function openSettings(note) {
  $("#temperature").value = settings.temperature;
  $("#top-p").value = settings.top_p;
  $("#max-tokens").value = settings.max_tokens ?? "";
  $("#api-key").value = settings.key;
  $("#settings-note").textContent = note || "";
  if (!$("#settings").open) $("#settings").showModal();
}

function saveSettings() {
  const num = (sel, lo, hi, fallback) => {
    const v = Number($(sel).value);
    return Number.isFinite(v) && v >= lo && v <= hi ? v : fallback;
  };
  settings.temperature = num("#temperature", 0, 2, 0.6);
  settings.top_p = num("#top-p", 0.01, 1, 0.95);
  settings.max_tokens = $("#max-tokens").value.trim() ? Math.round(num("#max-tokens", 1, 1e7, 0)) || null : null;
  settings.key = $("#api-key").value.trim();
  localStorage.setItem("nanoseek.settings", JSON.stringify(settings));
  showError("");  // (a new key: what failed may work now)
  if (state.id) openConversation(state.id);
  else loadList().catch((e) => showError(e.message));
}

// ---------------------------------------------------------------- wiring

const emptyNote = $("#empty");

function autosize() {
  const t = $("#input");
  t.style.height = "auto";
  t.style.height = Math.min(t.scrollHeight, 240) + "px";
}

function setThinking(on) {
  state.thinking = on;
  $("#deepthink").setAttribute("aria-pressed", String(on));
  localStorage.setItem("nanoseek.thinking", on ? "on" : "off");
}

$("#composer").onsubmit = (e) => { e.preventDefault(); send($("#input").value); };
$("#input").onkeydown = (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send($("#input").value);
  }
};
$("#input").oninput = autosize;
$("#stop").onclick = stop;
$("#new-chat").onclick = newChat;
$("#deepthink").onclick = () => setThinking(!state.thinking);
$("#menu").onclick = () => document.body.classList.toggle("sidebar-open");
$("#settings-button").onclick = () => openSettings();
$("#settings-save").onclick = saveSettings;
let searchTimer;
$("#search").oninput = () => { clearTimeout(searchTimer); searchTimer = setTimeout(loadList, 200); };
document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.busy) stop(); });

setThinking(state.thinking);
api("/api/info").then((r) => r.json()).then((info) => {
  $("#notice").textContent = info.notice;
  $("#notice").hidden = !info.notice;
  if (info.hint) {  // what this model can be asked
    $("#input").placeholder = `${info.hint.split(":")[0]}…`;
    $("#ask").textContent = `${info.hint}.`;
  }
  document.title = `${info.model} chat`;
}).catch(() => { /* a 401 has opened the settings already */ });
const opened = /^#c=([0-9a-f]+)$/.exec(location.hash);
if (opened) openConversation(opened[1]); else loadList().catch((e) => showError(e.message));
