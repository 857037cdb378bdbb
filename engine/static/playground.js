// sse-engine playground: one reply at a time, streamed by EventSource from the
// native GET v1/chat/stream, showing what the gateway does with it: tokens as
// they arrive, resume after a dropped connection, Stop, and its error messages.
// Vanilla JS, no build step. Every URL is relative to the page, so the page
// works wherever the gateway is mounted (/, /llm/, /llm/playground).
"use strict";

// Seconds the generation may go on while no reader follows it (the gateway
// caps this at --max-detach). It is what lets a reply survive a network blip
// even when the gateway notices the dead connection before the browser has
// reconnected; a reply nobody comes back for ends that long after.
const DETACH_SECONDS = 30;
// The raw view keeps the last frames only: a long reply must not grow the page without end.
const MAX_RAW_FRAMES = 2000;
// Query parameters the page sets itself (engine/dialects/native.py QUERY_FIELDS).
const OWN_FIELDS = ["q", "provider", "model", "parent", "parent_id"];

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), model: $("model"), models: $("models"), options: $("options"),
  parent: $("parent"), conversation: $("conversation"), load: $("load"), clear: $("clear"),
  transcript: $("transcript"), composer: $("composer"), prompt: $("prompt"),
  send: $("send"), stop: $("stop"), ttft: $("ttft"), tokens: $("tokens"), rate: $("rate"),
  finish: $("finish"), streamId: $("stream-id"), notices: $("notices"),
  rawToggle: $("raw-toggle"), raw: $("raw"),
};

let current = null; // the Exchange being streamed, if any

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

// fetch and decode JSON; a refusal throws with the gateway's own message.
async function request(url, init = {}) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store", ...init });
  } catch (exc) {
    throw new Error(`the gateway is unreachable (${exc.message})`);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(describe(body) || `HTTP ${response.status}`);
  return body;
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

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  // The reply goes to the conversation it was asked in: no switching mid-stream.
  for (const control of [ui.load, ui.clear, ui.parent, ui.conversation]) control.disabled = busy;
}

// One prompt and its streamed reply.
class Exchange {
  constructor(text) {
    this.url = streamUrl(text);
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
    raw([`: GET ${this.url}`]);
    setBusy(true);
    setStatus("connecting…");

    const source = new EventSource(this.url);
    this.source = source;
    source.addEventListener("start", (event) => this.receive(event, (data) => this.started(data)));
    source.addEventListener("message", (event) => this.receive(event, (data) => this.chunk(data)));
    source.addEventListener("done", (event) => this.receive(event, (data) => this.done(data)));
    // "error" is two things: the gateway's `event: error` (a MessageEvent with
    // data), and EventSource's own report that the connection failed.
    source.addEventListener("error", (event) => {
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
  async explain() {
    const aborter = new AbortController();
    const headers = this.lastId ? { "Last-Event-ID": this.lastId } : {};
    try {
      const init = { headers, cache: "no-store", signal: aborter.signal };
      const response = await fetch(this.url, init);
      const type = response.headers.get("Content-Type") || "";
      if (type.startsWith("application/json")) {
        const body = await response.json().catch(() => null);
        this.fail(describe(body) || `HTTP ${response.status}`);
      } else if (response.status === 204) {
        this.fail("the stream had already ended");
      } else if (this.lastId) {
        aborter.abort(); // a resume, not a generation: nothing to stop
        this.fail("the stream could not be resumed, then could on a second try: "
          + "load the conversation to see the whole reply");
      } else {
        if (response.body) await stopFirstStream(response.body);
        aborter.abort();
        this.fail(`the stream failed to open, then opened on a second try (HTTP ${response.status}): `
          + "send again");
      }
    } catch (exc) {
      this.fail(`the gateway is unreachable (${exc.message})`);
    }
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
      const answer = await request(url, { method: "POST" });
      notice(`stop: the stream is ${answer.state}`);
    } catch (exc) {
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
    this.source.close(); // never let EventSource reconnect to a finished stream
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
async function stopFirstStream(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  while (text.length < 8192) {
    const { value, done } = await reader.read();
    if (done) return;
    text += decoder.decode(value, { stream: true });
    const match = /"stream_id":"([\w-]+)"/.exec(text);
    if (match) {
      await fetch(`v1/streams/${match[1]}/stop`, { method: "POST" }).catch(() => {});
      return;
    }
  }
}

async function loadModels() {
  try {
    const list = await request("v1/models");
    for (const model of list.data) {
      const option = document.createElement("option");
      option.value = model.id;
      ui.models.append(option);
    }
    const preferred = list.data.find((model) => model.owned_by === "mock") || list.data[0];
    if (!ui.model.value && preferred) ui.model.value = preferred.id;
  } catch (exc) {
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
    notice(`memory: ${exc.message}`, "error");
  }
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.prompt.value.trim();
  if (!text || (current && !current.ended)) return;
  ui.prompt.value = "";
  current = new Exchange(text);
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

// data-ready on <body> once both have answered: for whatever drives the page (its tests).
Promise.all([loadModels(), loadConversation()]).then(() => {
  document.body.dataset.ready = "true";
});
