// xdai chat page: protocol v1 over one WebSocket (docs/protocol.md). No build step, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  ws: null, bot: null, sessionId: null, resumeToken: null, lastSeq: 0, inFlight: null, unacked: null,
  retryDelay: 500, reconnectTimer: null, intentional: false, rendered: new Set(),
  timer: null, chipIntro: "", ended: false, assets: {}, emotion: null,
};
const store = {
  key: (bot) => `xdai:${bot}`,
  load(bot) { try { return JSON.parse(sessionStorage.getItem(this.key(bot))) || {}; } catch { return {}; } },
  save() {
    if (!state.bot) return;
    const prev = this.load(state.bot);
    sessionStorage.setItem(this.key(state.bot), JSON.stringify({
      sessionId: state.sessionId, resumeToken: state.resumeToken, lastSeq: state.lastSeq, sent: prev.sent || {},
    }));
  },
  remember(id, text) {
    const data = this.load(state.bot); data.sent = data.sent || {}; data.sent[id] = text;
    data.sessionId = state.sessionId; data.lastSeq = state.lastSeq;
    sessionStorage.setItem(this.key(state.bot), JSON.stringify(data));
  },
  forget(bot) { sessionStorage.removeItem(this.key(bot)); },
};

function setStatus(text, kind) { const el = $("status"); el.textContent = text; el.dataset.state = kind; }
function showError(text) { const el = $("error"); el.textContent = text; el.hidden = !text; }
function busy(on) { state.inFlight = on; $("send").disabled = !!on || state.ended; $("stop").hidden = !on; }

function bubble(kind, id, text) {
  const el = document.createElement("div");
  el.className = `msg ${kind}`;
  if (id) el.dataset.id = id;
  const body = document.createElement("div"); body.className = "text"; body.textContent = text || "";
  const meta = document.createElement("div"); meta.className = "meta";
  el.append(body, meta);
  $("log").append(el);
  $("log").scrollTop = $("log").scrollHeight;
  return el;
}
const find = (id) => document.querySelector(`.msg[data-id="${CSS.escape(id)}"]`);

function whyPanel(grounding) {
  const details = document.createElement("details"); details.className = "why";
  const summary = document.createElement("summary");
  summary.textContent = `why (${grounding.length} source${grounding.length === 1 ? "" : "s"})`;
  const list = document.createElement("ol");
  for (const g of grounding) {
    const li = document.createElement("li"); li.className = "source";
    const score = document.createElement("span"); score.className = "score";
    score.textContent = ` [${g.kind} · ${Number(g.score).toFixed(2)}]`;
    li.append(document.createTextNode(g.text), score);
    li.title = g.source_id;
    list.append(li);
  }
  details.append(summary, list);
  return details;
}

// -- a bot's pictures: GET /bots/<bot>/assets/<kind>[/<name>], with the API key when the server needs one ---------
const pictures = new Map();  // url -> object URL
function assetUrl(bot, kind, name) {
  return `/bots/${encodeURIComponent(bot)}/assets/${kind}${name ? `/${encodeURIComponent(name)}` : ""}`;
}
async function picture(url) {
  if (!pictures.has(url)) {
    const key = $("api-key").value.trim();
    pictures.set(url, fetch(url, key ? { headers: { Authorization: `Bearer ${key}` } } : {})
      .then((r) => (r.ok ? r.blob() : null)).then((b) => (b ? URL.createObjectURL(b) : null)).catch(() => null));
  }
  return pictures.get(url);
}
async function showIcon(bot) {
  const img = $("bot-icon"); img.hidden = true; img.removeAttribute("src");
  if (!(state.assets[bot] || {}).icon) return;
  const src = await picture(assetUrl(bot, "icon"));
  if (src && state.bot === bot) { img.src = src; img.alt = bot; img.hidden = false; }
}
async function showEmotion(el, bot, name) {  // a reply shaped by a condition: the persona's image of that emotion
  if (!name || !((state.assets[bot] || {}).emotions || []).includes(name) || el.querySelector("img.emotion")) return;
  const src = await picture(assetUrl(bot, "emotion", name));
  if (!src) return;
  const img = document.createElement("img"); img.className = "emotion"; img.alt = name; img.title = name; img.src = src;
  el.querySelector(".text").after(img);
}

function chips(suggestions, intro) {
  const box = $("chips"); box.replaceChildren();
  if (intro && suggestions && suggestions.length && !state.ended) {
    const label = document.createElement("span"); label.className = "intro"; label.textContent = intro; box.append(label);
  }
  for (const q of state.ended ? [] : suggestions || []) {
    const b = document.createElement("button"); b.type = "button"; b.className = "chip"; b.textContent = q;
    b.addEventListener("click", () => { $("input").value = q; send(); });
    box.append(b);
  }
}

function onFrame(f) {
  if (typeof f.seq === "number") {
    if (f.seq <= state.lastSeq) return;  // already seen (resume overlap)
    state.lastSeq = f.seq; store.save();
  }
  switch (f.type) {
    case "session.opened": {
      state.sessionId = f.session_id;
      if (f.resume_token) state.resumeToken = f.resume_token;  // proof that the session is ours (no API keys)
      store.save();
      setStatus(`${f.bot} · ${f.resumed ? "resumed" : "connected"}`, "open");
      state.retryDelay = 500;
      if (!state.rendered.has("greeting") && f.greeting) { bubble("bot greeting", null, f.greeting); state.rendered.add("greeting"); }
      if (state.unacked) sendFrame({ type: "message.create", id: state.unacked.id, text: state.unacked.text });
      break;
    }
    case "message.ack": {
      if (state.unacked && state.unacked.id === f.reply_to) state.unacked = null;
      let el = find(f.reply_to);
      if (!el) { const sent = store.load(state.bot).sent || {}; el = bubble("user", f.reply_to, sent[f.reply_to] || "…"); }
      el.querySelector(".meta").textContent = "✓";
      break;
    }
    case "response.start": {
      if (!find(f.response_id)) bubble("bot streaming", f.response_id, "");
      busy(f.reply_to); chips([]);
      break;
    }
    case "response.delta": {
      const el = find(f.response_id) || bubble("bot streaming", f.response_id, "");
      el.querySelector(".text").textContent += f.text;
      $("log").scrollTop = $("log").scrollHeight;
      break;
    }
    case "response.end": {
      const el = find(f.response_id) || bubble("bot", f.response_id, "");
      el.classList.remove("streaming");
      if (typeof f.text === "string" && f.finish_reason !== "interrupted") el.querySelector(".text").textContent = f.text;
      const t = f.timings || {};
      const notes = [];
      if (f.finish_reason !== "stop") notes.push(f.finish_reason);
      if (t.ttft_ms != null) notes.push(`first token ${Math.round(t.ttft_ms)} ms`);
      el.querySelector(".meta").textContent = notes.join(" · ");
      if (f.finish_reason === "error" || f.finish_reason === "interrupted") el.classList.add("failed");
      if (f.grounding && f.grounding.length) el.append(whyPanel(f.grounding));
      if (state.emotion && f.finish_reason !== "error" && f.finish_reason !== "interrupted") showEmotion(el, state.bot, state.emotion);
      state.emotion = null;
      chips(f.suggestions, state.chipIntro);
      busy(null);
      break;
    }
    case "error": {
      showError(`${f.code}: ${f.message}`);
      if (f.reply_to) {
        const el = find(f.reply_to); if (el) { el.classList.add("failed"); el.querySelector(".meta").textContent = f.code; }
        if (state.unacked && state.unacked.id === f.reply_to) state.unacked = null;
        if (state.inFlight === f.reply_to || !state.inFlight) busy(null);
      }
      if (f.code === "session_not_found" || (f.code === "forbidden" && f.seq == null && !f.reply_to)) {
        store.forget(state.bot); state.sessionId = null; state.resumeToken = null; state.lastSeq = 0; openSession();
      }
      if (f.code === "unauthorized") { $("settings").open = true; }
      break;
    }
    case "event": { flowEvent(f); break; }
    default: break;  // pong
  }
}

// -- bot flows: events a bot's flow sends (bots/flows.py, docs/bots.md) -----------------------------------------
function two(n) { return String(n).padStart(2, "0"); }
function clockText(ms) { const s = Math.max(Math.ceil(ms / 1000), 0); return `${two(Math.floor(s / 60))}:${two(s % 60)}`; }

function showTimer(d, ts) {
  const el = $("timer");
  clearInterval(state.timer); state.timer = null;
  $("flowbar").hidden = false; el.hidden = false;
  if (!d.running) { el.textContent = d.text || `${d.label} 00:00`; el.dataset.state = "expired"; return; }
  const deadline = (typeof ts === "number" ? ts : Date.now()) + d.remaining_s * 1000;
  const tick = () => {
    const left = deadline - Date.now();
    el.textContent = `${d.label} 剩余时间 ${clockText(left)}`.trim();
    el.dataset.state = left > 0 ? "running" : "expired";
    if (left <= 0) { clearInterval(state.timer); state.timer = null; }
  };
  el.dataset.state = "running"; tick(); state.timer = setInterval(tick, 250);
}

function showActions(items) {
  const box = $("actions"); box.replaceChildren();
  for (const a of items || []) {
    const b = document.createElement("button"); b.type = "button"; b.className = "action"; b.textContent = a.label;
    b.addEventListener("click", () => { $("input").value = a.send; send(); });
    box.append(b);
  }
  $("flowbar").hidden = false;
}

function endSession() {
  state.ended = true; clearInterval(state.timer); state.timer = null;
  $("actions").replaceChildren(); chips([]);
  $("input").disabled = true; $("input").placeholder = "会话已结束 · session ended (New chat to start again)";
  $("send").disabled = true;
}

function flowEvent(f) {
  const d = f.data || {};
  switch (f.name) {
    case "timer": showTimer(d, f.ts); break;
    case "suggestions": state.chipIntro = d.intro || ""; chips(d.items, state.chipIntro); break;
    case "actions": showActions(d.items); break;
    case "phase": $("flowbar").hidden = false; $("phase").textContent = d.label || d.name; $("phase").dataset.phase = d.name; break;
    case "session.end": endSession(); break;
    case "summary": {
      if (d.closing) bubble("bot", null, d.closing);
      const el = bubble("bot summary", null, "");
      const pre = document.createElement("pre"); pre.className = "summary-text"; pre.textContent = d.summary || "";
      const details = document.createElement("details"); details.className = "transcript";
      const s = document.createElement("summary"); s.textContent = `transcript (${(d.transcript || []).length})`;
      const list = document.createElement("ol");
      for (const t of d.transcript || []) { const li = document.createElement("li"); li.textContent = `${t.role}: ${t.text}`; list.append(li); }
      details.append(s, list);
      el.querySelector(".text").append(pre, details);
      break;
    }
    case "handoff": {
      const el = bubble("bot event note", null, d.accepted ? `转人工 · ${(d.contact || {}).phone || ""}` : (d.text || "handoff"));
      if (d.actions) for (const a of d.actions) {
        const b = document.createElement("button"); b.type = "button"; b.className = "chip"; b.textContent = a.label;
        b.addEventListener("click", () => { $("input").value = a.send; send(); });
        el.append(b);
      }
      break;
    }
    case "condition": state.emotion = d.name || null; bubble("bot event note", null, `post-response: ${d.post_response || ""}`); break;
    default: bubble("bot event note", null, `[${f.name}] ${JSON.stringify(f.data)}`);
  }
}

function sendFrame(fields) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
  const frame = { v: 1, ...fields };
  if (state.sessionId && fields.type !== "session.open") frame.session_id = state.sessionId;
  state.ws.send(JSON.stringify(frame));
  return true;
}

function openSession() {
  const saved = store.load(state.bot);
  const frame = { type: "session.open", bot: state.bot };
  const key = $("api-key").value.trim();
  if (key) frame.auth = key;
  if (saved.sessionId) {
    frame.session_id = saved.sessionId; frame.resume_from_seq = state.lastSeq;
    if (saved.resumeToken) frame.resume_token = saved.resumeToken;
  } else {
    const user = new URLSearchParams(location.search).get("user");  // ?user=ID: a session with long-term memory
    if (user) frame.user = user;
  }
  sendFrame(frame);
}

function connect() {
  clearTimeout(state.reconnectTimer);
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const ws = new WebSocket(url);
  state.ws = ws; state.intentional = false;
  setStatus("connecting…", "connecting");
  ws.addEventListener("open", () => { showError(""); openSession(); });
  ws.addEventListener("message", (ev) => {
    let frame; try { frame = JSON.parse(ev.data); } catch { showError("the server sent a frame that is not JSON"); return; }
    onFrame(frame);
  });
  ws.addEventListener("close", (ev) => {
    if (state.ws !== ws) return;
    setStatus(`disconnected (${ev.code})`, "closed");
    if (state.intentional) return;
    if (ev.code === 4409) { showError("this chat was opened in another tab"); return; }
    if (ev.code === 1008) { showError(`connection refused: ${ev.reason || "policy"}`); return; }
    if (ev.reason) showError(`connection closed: ${ev.reason} — reconnecting`);
    state.reconnectTimer = setTimeout(connect, state.retryDelay);
    state.retryDelay = Math.min(state.retryDelay * 2, 10000);
  });
}

function newId() { return `m-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`; }

function send() {
  const input = $("input"); const text = input.value.trim();
  if (!text || state.inFlight || state.ended) return;
  const id = newId();
  bubble("user", id, text);
  store.remember(id, text);
  state.unacked = { id, text };
  busy(id);
  if (!sendFrame({ type: "message.create", id, text })) showError("not connected — the message will be sent on reconnect");
  input.value = "";
}

function switchBot(bot, fresh) {
  if (state.ws) { state.intentional = true; state.ws.close(1000, "switching bot"); }
  state.bot = bot; localStorage.setItem("xdai:bot", bot);
  if (fresh) store.forget(bot);
  const saved = store.load(bot);
  state.sessionId = saved.sessionId || null; state.resumeToken = saved.resumeToken || null;
  state.lastSeq = 0;  // replay the whole log into an empty page
  state.rendered = new Set(); state.unacked = null; state.ended = false; state.chipIntro = ""; state.emotion = null;
  showIcon(bot);
  clearInterval(state.timer); state.timer = null;
  $("flowbar").hidden = true; $("timer").hidden = true; $("phase").textContent = ""; $("actions").replaceChildren();
  $("input").disabled = false; $("input").placeholder = "说点什么… (Enter to send, Shift+Enter for a new line)";
  busy(null); chips([]); showError("");
  $("log").replaceChildren();
  connect();
}

async function init() {
  $("api-key").value = localStorage.getItem("xdai:key") || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("xdai:key", $("api-key").value.trim());
    if (state.bot) switchBot(state.bot, false); else location.reload();  // no bot list yet: it needed the key
  });
  $("composer").addEventListener("submit", (ev) => { ev.preventDefault(); send(); });
  $("input").addEventListener("keydown", (ev) => { if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); send(); } });
  $("stop").addEventListener("click", () => { if (state.inFlight) sendFrame({ type: "response.cancel", reply_to: state.inFlight }); });
  $("new-session").addEventListener("click", () => switchBot(state.bot, true));
  $("bot").addEventListener("change", (ev) => switchBot(ev.target.value, false));
  let bots = [];
  const key = $("api-key").value.trim();  // with API keys set, /bots needs one too
  try {
    const resp = await fetch("/bots", key ? { headers: { Authorization: `Bearer ${key}` } } : {});
    if (resp.status === 401) { $("settings").open = true; showError("this server needs an API key (Key, above)"); return; }
    bots = await resp.json();
  } catch (err) { showError(`cannot list bots: ${err}`); return; }
  for (const b of bots) {
    state.assets[b.name] = b.assets || {};
    const opt = document.createElement("option"); opt.value = b.name; opt.textContent = b.description ? `${b.name} — ${b.description}` : b.name;
    $("bot").append(opt);
  }
  const wanted = new URLSearchParams(location.search).get("bot") || localStorage.getItem("xdai:bot");
  const bot = bots.some((b) => b.name === wanted) ? wanted : (bots[0] && bots[0].name);
  if (!bot) { showError("this server hosts no bots"); return; }
  $("bot").value = bot;
  switchBot(bot, false);
}

init();
