// sse-engine playground: one reply at a time, streamed by EventSource from the
// native GET v1/chat/stream, showing what the gateway does with it: tokens as
// they arrive, resume after a dropped connection, Stop, and its error messages.
// Vanilla JS, no build step. Every URL is relative to the page, so the page
// works wherever the gateway is mounted (/, /llm/, /llm/playground).
//
// With client keys on, the key typed in goes as `Authorization: Bearer` on
// every fetch, and never in a URL. EventSource cannot send a header, so each
// stream carries a token minted from the key (POST v1/tokens), valid minutes.
// The key stays in this page's memory, or in sessionStorage when asked (never
// localStorage); it is never logged, nor shown in the raw view.
"use strict";

// Seconds the generation may go on while no reader follows it (the gateway
// caps this at --max-detach). It is what lets a reply survive a network blip
// even when the gateway notices the dead connection before the browser has
// reconnected; a reply nobody comes back for ends that long after.
const DETACH_SECONDS = 30;
// The raw view keeps the last frames only: a long reply must not grow the page without end.
const MAX_RAW_FRAMES = 2000;
// Query parameters the page sets itself (engine/dialects/native.py QUERY_FIELDS).
const OWN_FIELDS = ["q", "provider", "model", "parent", "parent_id", "token"];
// Seconds a stream's token is asked for (the gateway caps it at its token_ttl),
// and how long before it expires a new one is minted for the next stream.
const TOKEN_TTL = 300;
const RENEW_BEFORE = 30;
// Where "remember in this tab" keeps the key: sessionStorage, gone with the tab.
const KEY_STORAGE = "sse-engine.playground.key";

const $ = (id) => document.getElementById(id);
const ui = {
  key: $("key"), remember: $("remember"), keyState: $("key-state"),
  status: $("status"), model: $("model"), models: $("models"), options: $("options"),
  parent: $("parent"), conversation: $("conversation"), load: $("load"), clear: $("clear"),
  transcript: $("transcript"), composer: $("composer"), prompt: $("prompt"),
  send: $("send"), stop: $("stop"), ttft: $("ttft"), tokens: $("tokens"), rate: $("rate"),
  finish: $("finish"), streamId: $("stream-id"), notices: $("notices"),
  rawToggle: $("raw-toggle"), raw: $("raw"),
};

let current = null; // the Exchange being streamed, if any

// A refusal of the gateway's, with its HTTP status.
class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function setStatus(text, kind = "") {
  ui.status.textContent = text;
  ui.status.className = kind;
}

function notice(text, kind = "info") {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = text;
  ui.notices.append(item);
}

// The gateway's error, from its JSON body or an error event's data: native
// {error: true, message, code, type}, or on the OpenAI routes (v1/models)
// {error: {message, type, code}}. Null when the body is not one.
function describe(body) {
  const error = body && typeof body.error === "object" && body.error ? body.error : body;
  if (!error || typeof error.message !== "string") return null;
  const detail = [error.code, error.type].filter((part) => part !== null && part !== undefined);
  return detail.length ? `${error.message} (${detail.join(" ")})` : error.message;
}

function addMessage(role, text = "") {
  const message = document.createElement("div");
  message.className = `msg ${role}`;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("p");
  body.className = "text";
  body.textContent = text;
  message.append(label, body);
  ui.transcript.append(message);
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
  return body;
}

function raw(lines) {
  ui.raw.append(lines.join("\n") + "\n\n");
  while (ui.raw.childNodes.length > MAX_RAW_FRAMES) ui.raw.firstChild.remove();
}

// -- the key ---------------------------------------------------------------------------

function currentKey() {
  return ui.key.value.trim();
}

function authorization(key) {
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function setKeyState(text) {
  ui.keyState.textContent = text;
  ui.key.classList.toggle("refused", Boolean(text));
  ui.key.setAttribute("aria-invalid", text ? "true" : "false");
}

// A 401 or 403, said next to the key field in the gateway's words.
function refused(exc, key) {
  if (exc.status !== 401 && exc.status !== 403) return;
  setKeyState(`${key ? "key refused" : "key needed"}: ${exc.message}`);
}

// sessionStorage may be refused (storage off): the key then stays in memory only.
function storage() {
  try {
    return window.sessionStorage;
  } catch {
    return null;
  }
}

function rememberKey() {
  const store = storage();
  const key = currentKey();
  try {
    if (ui.remember.checked && key) store?.setItem(KEY_STORAGE, key);
    else store?.removeItem(KEY_STORAGE);
  } catch {
    // full or refused: in memory only
  }
}

// The token the next stream carries, minted from `key`; null when there is
// none to carry: no key (an open gateway), or a gateway that mints none for it
// (403: an open gateway, where no token is needed; or the admin key).
let minted = { key: null };

async function streamToken(key, { fresh = false } = {}) {
  if (!key) return null;
  if (minted.key !== key) minted = { key };
  if (minted.none) return null;
  if (!fresh && minted.token && minted.expires - Date.now() > RENEW_BEFORE * 1000) {
    return minted.token;
  }
  let answer;
  try {
    const init = {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ttl: TOKEN_TTL }),
    };
    answer = await call("v1/tokens", init, key);
  } catch (exc) {
    if (exc.status !== 403) throw exc;
    if (minted.key === key) minted.none = exc.message;
    raw([`: POST v1/tokens: ${exc.message}; streams go without a token`]);
    return null;
  }
  const { response, body } = answer;
  // expires_at is on the gateway's clock: count its lifetime from the
  // gateway's Date, so that a browser's clock set wrong does not matter.
  const served = Date.parse(response.headers.get("Date") || "");
  const left = body.expires_at * 1000 - (Number.isNaN(served) ? Date.now() : served);
  if (minted.key === key) Object.assign(minted, { token: body.token, expires: Date.now() + left });
  raw([`: POST v1/tokens: a token for EventSource, valid ${Math.round(left / 1000)} s`]);
  return body.token;
}

// The raw view shows a token by its prefix only: it is a credential too, for minutes.
function shown(url) {
  return url.replace(/([?&]token=)([^&]{0,5})[^&]*/, "$1$2…");
}

// -- the API ---------------------------------------------------------------------------

// fetch with the key and decode JSON; a refusal throws an ApiError with the gateway's message.
async function call(url, init = {}, key = currentKey()) {
  // What fetch would refuse to put in a header, refused here in words.
  if (!/^[\x21-\x7e]*$/.test(key)) {
    throw new ApiError("a key is printable ASCII, with no spaces", 401);
  }
  const headers = { ...authorization(key), ...(init.headers || {}) };
  let response;
  try {
    response = await fetch(url, { cache: "no-store", ...init, headers });
  } catch (exc) {
    throw new Error(`the gateway is unreachable (${exc.message})`);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(describe(body) || `HTTP ${response.status}`, response.status);
  return { response, body };
}

async function request(url, init = {}, key = currentKey()) {
  return (await call(url, init, key)).body;
}

function session() {
  const parent = ui.parent.value.trim();
  const id = ui.conversation.value.trim();
  return parent && id ? { parent, id } : null;
}

function memoryUrl({ parent, id }) {
  return `v1/memory/${encodeURIComponent(parent)}/${encodeURIComponent(id)}`;
}

function streamUrl(text) {
  const query = new URLSearchParams({ q: text });
  const model = ui.model.value.trim();
  const slash = model.indexOf("/");
  if (slash > 0) {
    // A /v1/models id is "provider/model"; a bare name goes to the default provider.
    query.set("provider", model.slice(0, slash));
    query.set("model", model.slice(slash + 1));
  } else if (model) {
    query.set("model", model);
  }
  const conversation = session();
  if (conversation) {
    query.set("parent", conversation.parent);
    query.set("parent_id", conversation.id);
  }
  const options = new URLSearchParams(ui.options.value.trim());
  for (const key of OWN_FIELDS) options.delete(key);
  if (!options.has("detach")) options.set("detach", DETACH_SECONDS);
  for (const [key, value] of options) query.append(key, value);
  return `v1/chat/stream?${query}`;
}

function withToken(url, token) {
  return token ? `${url}&token=${encodeURIComponent(token)}` : url;
}

// The resume route, from the last event shown: what a refused reconnect is
// retried with, under a new token (EventSource would only retry its own URL).
function resumeUrl(lastId, token) {
  const streamId = lastId.slice(0, lastId.lastIndexOf(":"));
  const query = new URLSearchParams({ last_event_id: lastId });
  if (token) query.set("token", token);
  return `v1/streams/${encodeURIComponent(streamId)}?${query}`;
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  // The reply goes to the conversation it was asked in: no switching mid-stream.
  // And with the key it was asked with (a stream is its key's: Stop needs that key).
  for (const control of [ui.load, ui.clear, ui.parent, ui.conversation, ui.key]) {
    control.disabled = busy;
  }
}

// One prompt and its streamed reply.
class Exchange {
  constructor(text, key) {
    this.key = key;
    this.base = streamUrl(text);
    this.url = this.base; // what the EventSource asks for (with its token)
    this.token = null;
    this.source = null;
    this.renewed = false; // a refused reconnect was retried with a new token
    this.streamId = null;
    this.last = -1; // the highest event number shown: ids are "<stream_id>:<n>"
    this.lastId = "";
    this.lost = false; // the connection dropped and EventSource is reconnecting
    this.ended = false;
    this.chunks = 0;
    this.usage = null;
    this.sent = performance.now();
    this.first = 0;
    this.latest = 0;
    addMessage("user", text);
    this.reply = addMessage("assistant");
    ui.notices.replaceChildren();
    for (const field of [ui.ttft, ui.tokens, ui.rate, ui.finish, ui.streamId]) {
      field.textContent = "–";
    }
    setKeyState("");
    loads += 1; // a conversation load still under way would wipe this exchange
    setBusy(true);
    setStatus("connecting…");
  }

  async start() {
    let token;
    try {
      token = await streamToken(this.key);
    } catch (exc) {
      refused(exc, this.key);
      this.fail(`token: ${exc.message}`);
      return;
    }
    if (this.ended) return; // cancelled while the token was minted
    this.token = token;
    this.open(withToken(this.base, token));
  }

  open(url) {
    this.url = url;
    raw([`: GET ${shown(url)}`]);
    const source = new EventSource(url);
    this.source = source;
    const on = (type, handle) => {
      // A source replaced by a resume under a new token says nothing more.
      source.addEventListener(type, (event) => source === this.source && handle(event));
    };
    on("start", (event) => this.receive(event, (data) => this.started(data)));
    on("message", (event) => this.receive(event, (data) => this.chunk(data)));
    on("done", (event) => this.receive(event, (data) => this.done(data)));
    // "error" is two things: the gateway's `event: error` (a MessageEvent with
    // data), and EventSource's own report that the connection failed.
    on("error", (event) => {
      if (event instanceof MessageEvent) this.receive(event, (data) => this.failed(data));
      else this.connectionError();
    });
  }

  // Every event shown once: a resume replays only what follows Last-Event-ID,
  // and anything at or below the last number shown is skipped all the same.
  receive(event, handle) {
    if (this.ended) return;
    const id = event.lastEventId;
    const n = Number(id.slice(id.lastIndexOf(":") + 1));
    const frame = [`id: ${id}`];
    if (event.type !== "message") frame.push(`event: ${event.type}`);
    frame.push(`data: ${event.data}`);
    if (!(n > this.last)) {
      raw([": already shown, skipped", ...frame]);
      return;
    }
    raw(frame);
    this.renewed = false;
    if (this.lost) {
      this.lost = false;
      notice(`resumed at event ${n}`, "resume");
      setStatus("streaming", "ok");
    }
    this.last = n;
    this.lastId = id;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      this.fail(`an event that is not JSON: ${event.data.slice(0, 80)}`);
      return;
    }
    handle(data);
  }

  started(start) {
    this.streamId = start.stream_id;
    ui.streamId.textContent = start.stream_id;
    setStatus(`streaming from ${start.provider}/${start.model}`, "ok");
  }

  chunk(chunk) {
    const now = performance.now();
    if (chunk.content) {
      if (!this.first) this.first = now;
      this.reply.append(chunk.content);
      ui.transcript.scrollTop = ui.transcript.scrollHeight;
    }
    this.chunks += 1;
    this.latest = now;
    if (chunk.usage) this.usage = chunk.usage;
    this.showStats();
  }

  done(done) {
    this.usage = done.usage || this.usage;
    this.showStats();
    ui.finish.textContent = done.finish_reason ?? "none";
    this.end(done.finish_reason === "stopped" ? "stopped" : "done", "ok");
  }

  failed(error) {
    this.fail(describe(error) || "the stream failed");
  }

  connectionError() {
    if (this.ended) return;
    if (this.source.readyState === EventSource.CONNECTING) {
      // The connection dropped. EventSource reconnects by itself, after the
      // stream's `retry:` delay, to the same URL with Last-Event-ID; the
      // gateway then resumes this stream (it never starts a second one).
      if (!this.lost) {
        this.lost = true;
        notice(this.last < 0
          ? "cannot reach the gateway: retrying…"
          : `connection lost after event ${this.last}: reconnecting…`);
        raw([": connection lost, EventSource reconnects with Last-Event-ID"]);
      }
      setStatus("reconnecting…", "warn");
      return;
    }
    // CLOSED: the gateway answered with something other than a stream.
    this.source.close();
    this.explain();
  }

  // EventSource cannot read a response that is not a stream: a 4xx or 5xx
  // carrying the gateway's JSON error only fires "error" and closes. So the
  // same request is made again with fetch, which can read the body, and its
  // message is shown. That is safe: what refuses a stream before its first
  // event (a bad option, an unknown provider, a provider without a key, an
  // expired or malformed resume) refuses the same way again, and nothing was
  // stored (memory is written only once a stream is under way). Checking with
  // a fetch *before* every EventSource instead would cost each send a second
  // request, and could not see what only the real request meets (an upstream
  // refusing). Should the second try be answered with a stream after all (the
  // first refusal was transient), that stream is stopped and dropped at once.
  // It sends what the EventSource sent: the URL (with its token, not the key)
  // and Last-Event-ID. A token refused with a 401 (expired while it streamed,
  // or made by a gateway since restarted) is replaced once: renew().
  async explain() {
    const aborter = new AbortController();
    const headers = this.lastId ? { "Last-Event-ID": this.lastId } : {};
    try {
      const init = { headers, cache: "no-store", signal: aborter.signal };
      const response = await fetch(this.url, init);
      const type = response.headers.get("Content-Type") || "";
      if (type.startsWith("application/json")) {
        const body = await response.json().catch(() => null);
        const message = describe(body) || `HTTP ${response.status}`;
        if (response.status === 401 && this.token) {
          if (minted.token === this.token) minted.token = null; // the next stream mints anew
          if (!this.renewed) {
            await this.renew(message);
            return;
          }
        }
        // Without a token because the gateway mints none for this key (the
        // admin key): that is the refusal to show, not "needs a key".
        const why = !this.token && minted.key === this.key && minted.none;
        refused(new ApiError(why || message, response.status), this.key);
        this.fail(message);
      } else if (response.status === 204) {
        this.fail("the stream had already ended");
      } else if (this.lastId) {
        aborter.abort(); // a resume, not a generation: nothing to stop
        this.fail("the stream could not be resumed, then could on a second try: "
          + "load the conversation to see the whole reply");
      } else {
        if (response.body) await stopFirstStream(response.body, this.key);
        aborter.abort();
        this.fail(`the stream failed to open, then opened on a second try (HTTP ${response.status}): `
          + "send again");
      }
    } catch (exc) {
      this.fail(`the gateway is unreachable (${exc.message})`);
    }
  }

  // Ask again under a new token: a stream under way through GET v1/streams/{id}
  // from the last event shown (receive() skips whatever was shown already); one
  // refused before its first event from the start (a 401 comes before any
  // generation begins, so this is not a second one).
  async renew(message) {
    this.renewed = true;
    const again = this.lastId ? "resuming" : "asking again";
    notice(`the stream's token was refused (${message}): ${again} with a new token`, "resume");
    let token;
    try {
      token = await streamToken(this.key, { fresh: true });
    } catch (exc) {
      refused(exc, this.key);
      this.fail(`token: ${exc.message}`);
      return;
    }
    if (this.ended) return;
    if (!token) {
      this.fail(message);
      return;
    }
    this.token = token;
    this.open(this.lastId ? resumeUrl(this.lastId, token) : withToken(this.base, token));
  }

  async stop() {
    if (this.streamId === null) {
      // No start event yet, so no stream id to stop: leaving is all there is.
      this.end("cancelled");
      return;
    }
    ui.stop.disabled = true;
    try {
      const url = `v1/streams/${encodeURIComponent(this.streamId)}/stop`;
      const answer = await request(url, { method: "POST" }, this.key);
      notice(`stop: the stream is ${answer.state}`);
    } catch (exc) {
      refused(exc, this.key);
      // Nothing to tell the gateway (the stream is gone, or the gateway out of
      // reach): stop here, which is what was asked.
      notice(`stop: ${exc.message}`, "error");
      this.end("stopped here", "warn");
    }
  }

  fail(message) {
    if (this.ended) return;
    notice(message, "error");
    ui.finish.textContent = "error";
    if (!this.reply.textContent) this.reply.parentElement.remove();
    this.end("error", "error");
  }

  end(status, kind = "") {
    if (this.ended) return;
    this.ended = true;
    this.source?.close(); // never let EventSource reconnect to a finished stream
    setStatus(status, kind);
    setBusy(false);
    if (current === this) current = null;
  }

  showStats() {
    if (this.first) ui.ttft.textContent = `${Math.round(this.first - this.sent)} ms`;
    ui.tokens.textContent = String(this.usage ? this.usage.completion_tokens : this.chunks);
    const seconds = (this.latest - this.first) / 1000;
    // After the first token: its wait is the TTFT's, not the rate's.
    if (this.first && this.chunks > 1 && seconds > 0) {
      ui.rate.textContent = ((this.chunks - 1) / seconds).toFixed(1);
    }
  }
}

// A stream opened by explain()'s second try: find its id in the start event and stop it.
async function stopFirstStream(body, key) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  while (text.length < 8192) {
    const { value, done } = await reader.read();
    if (done) return;
    text += decoder.decode(value, { stream: true });
    const match = /"stream_id":"([\w-]+)"/.exec(text);
    if (match) {
      const init = { method: "POST", headers: authorization(key) };
      await fetch(`v1/streams/${match[1]}/stop`, init).catch(() => {});
      return;
    }
  }
}

async function loadModels() {
  try {
    const list = await request("v1/models");
    ui.models.replaceChildren();
    for (const model of list.data) {
      const option = document.createElement("option");
      option.value = model.id;
      ui.models.append(option);
    }
    const preferred = list.data.find((model) => model.owned_by === "mock") || list.data[0];
    if (!ui.model.value && preferred) ui.model.value = preferred.id;
  } catch (exc) {
    refused(exc, currentKey());
    notice(`models: ${exc.message}`, "error");
  }
}

let loads = 0; // a load answered after a later one started is dropped

async function loadConversation() {
  const ticket = ++loads;
  const conversation = session();
  if (!conversation) {
    ui.transcript.replaceChildren();
    setStatus("no conversation: replies are not remembered");
    return;
  }
  try {
    const { messages } = await request(memoryUrl(conversation));
    if (ticket !== loads) return;
    ui.transcript.replaceChildren();
    for (const message of messages) addMessage(message.role, message.content || "");
    setStatus(`${conversation.parent}/${conversation.id}: ${messages.length} stored messages`);
  } catch (exc) {
    if (ticket !== loads) return;
    refused(exc, currentKey());
    notice(`memory: ${exc.message}`, "error");
    setStatus("memory unavailable", "error");
  }
}

async function clearConversation() {
  const conversation = session();
  if (!conversation) return;
  loads += 1; // what a load still under way would show is gone
  try {
    const { deleted } = await request(memoryUrl(conversation), { method: "DELETE" });
    ui.transcript.replaceChildren();
    setStatus(`${conversation.parent}/${conversation.id}: cleared ${deleted} messages`);
  } catch (exc) {
    refused(exc, currentKey());
    notice(`memory: ${exc.message}`, "error");
  }
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.prompt.value.trim();
  if (!text || (current && !current.ended)) return;
  ui.prompt.value = "";
  current = new Exchange(text, currentKey());
  current.start();
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.stop.addEventListener("click", () => current && !current.ended && current.stop());
ui.load.addEventListener("click", loadConversation);
ui.clear.addEventListener("click", clearConversation);
ui.parent.addEventListener("change", loadConversation);
ui.conversation.addEventListener("change", loadConversation);
ui.rawToggle.addEventListener("change", () => {
  ui.raw.hidden = !ui.rawToggle.checked;
});

// A new key: the models it may use and its own conversations (each key has its own).
let appliedKey = null;

function applyKey() {
  rememberKey();
  const key = currentKey();
  if (key === appliedKey) return;
  appliedKey = key;
  setKeyState("");
  ui.notices.replaceChildren();
  loadAll();
}

ui.key.addEventListener("change", applyKey);
ui.key.addEventListener("input", rememberKey);
ui.key.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.isComposing) {
    event.preventDefault();
    applyKey();
  }
});
ui.remember.addEventListener("change", rememberKey);

// data-ready on <body> once both loads have answered (and "false" while a new
// key's are under way): for whatever drives the page (its tests).
let loading = 0;

function loadAll() {
  const ticket = ++loading;
  document.body.dataset.ready = "false";
  Promise.all([loadModels(), loadConversation()]).then(() => {
    if (ticket === loading) document.body.dataset.ready = "true";
  });
}

let stored = null;
try {
  stored = storage()?.getItem(KEY_STORAGE) ?? null;
} catch {
  // storage refused: nothing remembered
}
ui.key.value = stored || "";
ui.remember.checked = Boolean(stored);
appliedKey = currentKey();
loadAll();
