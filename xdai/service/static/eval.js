// The rating page: one pair at a time over /eval/ws (see xdai/service/rating.py for the frames).
"use strict";
const $ = (id) => document.getElementById(id);
const state = { study: null, questions: [], task: null, ws: null, finished: false, retry: 0, rater: null,
                needKey: false, timer: null };
window.evalState = state;

function studyId() {
  const m = location.pathname.match(/^\/eval\/([^/]+)$/);
  if (m) return decodeURIComponent(m[1]);
  return new URLSearchParams(location.search).get("study");
}
const raterKey = (id) => `xdai:rater:${id}`;

function setStatus(text, kind) { const s = $("status"); s.textContent = text; s.dataset.state = kind; }
function showError(text) { const e = $("error"); e.textContent = text; e.hidden = !text; }
function el(tag, cls, text) { const n = document.createElement(tag); if (cls) n.className = cls; if (text != null) n.textContent = text; return n; }

function connect() {
  clearTimeout(state.timer);
  const id = studyId();
  if (!id) { $("pick").hidden = false; setStatus("no study", "closed"); return; }
  state.study = id;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/eval/ws`);
  state.ws = ws;
  setStatus("connecting…", "connecting");
  ws.onopen = () => {
    const hello = { type: "hello", study: id };
    const rater = localStorage.getItem(raterKey(id));
    if (rater) hello.rater = rater;
    const key = $("api-key").value.trim();
    if (key) hello.auth = key;
    state.key = key;
    ws.send(JSON.stringify(hello));
  };
  ws.onmessage = (ev) => { if (state.ws === ws) handle(JSON.parse(ev.data)); };
  ws.onclose = () => {
    if (state.ws !== ws) return;  // replaced by a newer socket
    setStatus(state.needKey ? "needs a key" : "disconnected", "closed");
    if (!state.finished && !state.needKey && state.retry < 8) {
      state.retry += 1;
      state.timer = setTimeout(connect, 500 * state.retry);
    }
  };
}

function handle(f) {
  if (f.type === "study") {
    showError("");
    state.retry = 0;
    state.rater = f.rater;
    localStorage.setItem(raterKey(f.study.id), f.rater);
    state.questions = f.study.questions;
    state.showKnowledge = f.study.show_knowledge;
    $("title").textContent = f.study.title;
    document.title = `${f.study.title} · xdai rating`;
    setStatus("connected", "open");
    progress(f.progress);
  } else if (f.type === "task") {
    render(f.task);
    progress(f.progress);
  } else if (f.type === "done") {
    state.finished = true;
    progress(f.progress);
    $("task").hidden = true;
    const done = $("done");
    done.dataset.reason = f.reason;
    done.textContent = f.reason === "dropped"
      ? "Thank you. Some of your answers did not match our attention checks, so this study has ended for you."
      : "All done: you have seen every pair in this study. Thank you!";
    done.hidden = false;
  } else if (f.type === "error") {
    showError(f.message);
    if (f.code === "unauthorized") { state.needKey = true; $("settings").open = true; $("api-key").focus(); state.ws.close(); }
    if (f.code === "no_study" || f.code === "bad_study") { state.finished = true; $("pick").hidden = false; }
    setButtons(true);
  }
}

function progress(p) { if (p) $("progress").textContent = `${p.done} / ${p.total} done`; }

function render(task) {
  state.task = task;
  $("task").dataset.task = task.id;
  const ctx = $("context");
  ctx.replaceChildren(...task.context.map((m) => el("li", m.speaker === "user" ? "user" : "bot", m.text)));
  const kn = task.knowledge || [];
  $("knowledge").hidden = !(state.showKnowledge && kn.length);
  $("knowledge-list").replaceChildren(...kn.map((k) => el("li", null, k)));
  $("left").querySelector(".text").textContent = task.left;
  $("right").querySelector(".text").textContent = task.right;
  const form = $("questions");
  form.replaceChildren(...state.questions.map(questionBlock));
  $("task").hidden = false;
  $("done").hidden = true;
  setButtons(true);
  $("submit").disabled = true;
  window.scrollTo(0, 0);
}

function radio(name, value, text) {
  const label = el("label");
  const input = el("input");
  input.type = "radio"; input.name = name; input.value = value;
  input.addEventListener("change", ready);
  label.append(input, " ", text);
  return label;
}

function questionBlock(q) {
  const fs = el("fieldset");
  fs.dataset.question = q.id;
  fs.append(el("legend", null, q.text));
  fs.append(radio(`q-${q.id}`, "left", "Reply A"), radio(`q-${q.id}`, "right", "Reply B"));
  if (!q.turing) fs.append(radio(`q-${q.id}`, "tie", "About the same"));
  if (q.scale) {
    for (const [side, name] of [["l", "Reply A"], ["r", "Reply B"]]) {
      const row = el("div", "scale", `${name}, 1 (poor) to 5 (excellent): `);
      for (let v = 1; v <= 5; v++) row.append(radio(`s-${q.id}-${side}`, String(v), String(v)));
      fs.append(row);
    }
  }
  return fs;
}

function picked(name) { const c = document.querySelector(`input[name="${name}"]:checked`); return c ? c.value : null; }

function collect() {
  const answers = {}, scores = {};
  for (const q of state.questions) {
    const a = picked(`q-${q.id}`);
    if (!a) return null;
    answers[q.id] = a;
    if (q.scale) {
      const l = picked(`s-${q.id}-l`), r = picked(`s-${q.id}-r`);
      if (!l || !r) return null;
      scores[q.id] = [Number(l), Number(r)];
    }
  }
  return { answers, scores };
}

function ready() { $("submit").disabled = collect() === null; }
function setButtons(on) { $("submit").disabled = !on; $("skip").disabled = !on; }

function send(frame) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) { showError("not connected: reconnecting…"); return; }
  setButtons(false);  // until the next task arrives: a double click does not answer twice
  state.ws.send(JSON.stringify(frame));
}

window.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = localStorage.getItem("xdai:key") || "";
  $("api-key").addEventListener("change", () => {
    const key = $("api-key").value.trim();
    localStorage.setItem("xdai:key", key);
    const live = state.ws && state.ws.readyState === WebSocket.OPEN && !state.needKey;
    if (live && key === state.key) return;  // the key this connection already uses
    state.finished = false; state.retry = 0; state.needKey = false;
    if (state.ws) { const old = state.ws; state.ws = null; old.close(); }
    connect();
  });
  $("submit").addEventListener("click", () => {
    const got = collect();
    if (got && state.task) send({ type: "answer", task: state.task.id, ...got });
  });
  $("skip").addEventListener("click", () => { if (state.task) send({ type: "skip", task: state.task.id }); });
  $("pick").addEventListener("submit", (ev) => {
    ev.preventDefault();
    location.href = `/eval/${encodeURIComponent($("study-id").value.trim())}`;
  });
  connect();
});
