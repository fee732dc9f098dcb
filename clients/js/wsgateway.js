// wsgateway.js: the browser client of the wasmCloud WebSocket messaging provider's listener
// (server mode, format `json`). No dependencies; an ES module; types in wsgateway.d.ts.
//
//   import { connect } from "./wsgateway.js";
//   const client = connect("wss://chat.example.com/chat", { token });
//   const room = client.subscribe("chat.lobby", (msg) => show(msg.text()), { history: true });
//   client.publish("chat.lobby", JSON.stringify({ text: "hi" }));
//   const reply = await client.request("rooms.list", "", { timeout: 2000 });
//   const here = await client.presence("chat.lobby");
//
// It reconnects by itself (exponential backoff with jitter), subscribes again, and recovers
// what each subscription missed from the listener's history (`since` its last offset), so a
// subscription with history sees every broadcast once, in order, across reconnects.

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function toBytes(body) {
  if (body === undefined || body === null) return new Uint8Array(0);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (typeof body === "string") return encoder.encode(body);
  return encoder.encode(JSON.stringify(body));
}

/** Whether NATS-style `pattern` (`*` one token, `>` the rest) matches `subject`. */
export function matches(pattern, subject) {
  const p = pattern.split("."), s = subject.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return s.length > i;
    if (i >= s.length || (p[i] !== "*" && p[i] !== s[i])) return false;
  }
  return p.length === s.length;
}

/** A message from the listener. */
class Message {
  constructor(frame, client) {
    this.subject = frame.subject;
    this.body = frame.body ? fromBase64(frame.body) : new Uint8Array(0);
    this.replyTo = frame.reply_to ?? null;
    this.offset = frame.offset ?? null;
    this.epoch = frame.epoch ?? null;
    this._client = client;
  }
  text() { return decoder.decode(this.body); }
  json() { return JSON.parse(this.text()); }
  /** Answers a request the component made to this client. */
  respond(body) {
    if (!this.replyTo) throw new Error(`message on ${this.subject} has no reply_to`);
    this._client.publish(this.replyTo, body);
  }
}

class Subscription {
  constructor(client, pattern, onMessage, options) {
    this.client = client;
    this.pattern = pattern;
    this.onMessage = onMessage;
    this.options = options;
    /** The last broadcast seen: where a recovery starts. */
    this.since = options.since ?? (options.history ? { offset: 0, epoch: "" } : null);
    this.active = true;
    this._settle = null;
    this.ready = this._waitReady();
  }
  _waitReady() {
    return new Promise((resolve, reject) => { this._settle = { resolve, reject }; });
  }
  _frame() {
    const frame = { subscribe: this.pattern };
    if (this.since) frame.since = { offset: this.since.offset, epoch: this.since.epoch };
    return frame;
  }
  _answered(frame) {
    if (frame.error !== undefined) {
      this.active = false;
      this.client.subscriptions.delete(this.pattern);
      this._settle?.reject(new Error(frame.error));
    } else {
      if (frame.recovered !== undefined) this.options.onRecovered?.(frame.recovered);
      this._settle?.resolve(frame.recovered ?? true);
    }
    this._settle = null;
  }
  /** Leaves the pattern. */
  unsubscribe() {
    if (!this.active) return;
    this.active = false;
    this.client.subscriptions.delete(this.pattern);
    this.client._send({ unsubscribe: this.pattern });
  }
}

class Client {
  constructor(url, options) {
    this.url = url;
    this.options = options;
    this.subscriptions = new Map();
    this.requests = new Map();
    // Presence questions, answered one at a time (the listener takes one at once).
    this.presences = [];
    this.buffered = [];
    this.state = "connecting";
    this.closed = false;
    this.attempt = 0;
    this.reconnects = 0;
    this.socket = null;
    this.timer = null;
    this._open();
  }

  _setState(state, detail) {
    this.state = state;
    this.options.onState?.(state, detail);
  }

  _open() {
    const { token, tokenIn = "protocol" } = this.options;
    let url = this.url, protocols;
    if (token && tokenIn === "query") {
      const u = new URL(url, globalThis.location?.href);
      u.searchParams.set("token", token);
      url = u.toString();
    } else if (token) {
      protocols = ["bearer", token];
    }
    const socket = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
    this.socket = socket;
    socket.onopen = () => {
      this.attempt = 0;
      this._setState("open");
      for (const sub of this.subscriptions.values()) {
        if (!sub._settle) sub.ready = sub._waitReady();
        this._send(sub._frame());
      }
      const waiting = this.buffered;
      this.buffered = [];
      for (const text of waiting) socket.send(text);
    };
    socket.onmessage = (event) => this._received(event.data);
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      for (const q of this.presences.splice(0)) {
        q.reject(new Error(`presence of ${q.subject}: the connection closed`));
      }
      if (this.closed) {
        this._setState("closed", { code: event.code, reason: event.reason });
        return;
      }
      const { min = 250, max = 10000 } = this.options.backoff ?? {};
      const ceiling = Math.min(max, min * 2 ** this.attempt++);
      const delay = ceiling / 2 + Math.random() * ceiling / 2;
      this.reconnects++;
      this._setState("reconnecting", { code: event.code, reason: event.reason, delay });
      this.timer = setTimeout(() => { this.timer = null; this._open(); }, delay);
    };
  }

  _send(frame) {
    const text = JSON.stringify(frame);
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(text);
      return;
    }
    // Subscriptions are sent again on open; anything else waits for it, within a bound.
    if (frame.subscribe !== undefined || frame.unsubscribe !== undefined) return;
    const limit = this.options.maxBuffered ?? 1000;
    if (this.buffered.length >= limit) {
      this._error(new Error(`not connected and ${limit} messages wait already: dropped one to ${frame.subject}`));
      return;
    }
    this.buffered.push(text);
  }

  _error(error) {
    if (this.options.onError) this.options.onError(error);
    else console.warn("wsgateway:", error.message);
  }

  _received(data) {
    if (typeof data !== "string") {
      this._error(new Error("a binary frame: this client speaks format json"));
      return;
    }
    let frame;
    try { frame = JSON.parse(data); } catch (e) { this._error(new Error(`a frame that is not JSON: ${e.message}`)); return; }
    if (frame.subject !== undefined && (frame.joined || frame.left)) {
      const sub = this.subscriptions.get(frame.subject);
      if (frame.joined) sub?.options.onJoin?.(frame.joined);
      else sub?.options.onLeave?.(frame.left);
      return;
    }
    if (frame.subject !== undefined) {
      const request = this.requests.get(frame.subject);
      if (request) {
        this.requests.delete(frame.subject);
        clearTimeout(request.timer);
        request.resolve(new Message(frame, this));
        return;
      }
      const msg = new Message(frame, this);
      for (const sub of this.subscriptions.values()) {
        if (!matches(sub.pattern, msg.subject)) continue;
        if (msg.offset !== null) sub.since = { offset: msg.offset, epoch: msg.epoch };
        try { sub.onMessage(msg); } catch (e) { this._error(e); }
      }
      return;
    }
    if (frame.presence !== undefined && frame.clients !== undefined) {
      this._presenceAnswered((q) => q.resolve(frame.clients));
      return;
    }
    if (frame.ok !== undefined) {
      this.subscriptions.get(frame.ok)?._answered(frame);
      return;
    }
    if (frame.error !== undefined) {
      // Answers carry no id: an error naming a subscription being made is that one's, one
      // about presence is the question's, one about subscribing without a pattern is the
      // oldest subscribe's; the rest (a refused publish) go to onError.
      const error = frame.error;
      const pending = [...this.subscriptions.values()].filter((sub) => sub._settle);
      const named = pending.find((sub) => error.includes(JSON.stringify(sub.pattern)));
      if (named) { named._answered(frame); return; }
      if (this.presences.length && /presence|who is in/.test(error)) {
        this._presenceAnswered((q) => q.reject(new Error(error)));
        return;
      }
      if (pending.length && /subscri|history/.test(error)) { pending[0]._answered(frame); return; }
      this._error(new Error(error));
    }
  }

  subscribe(pattern, onMessage, options = {}) {
    if (this.subscriptions.has(pattern)) throw new Error(`already subscribed to ${pattern}`);
    const sub = new Subscription(this, pattern, onMessage, options);
    this.subscriptions.set(pattern, sub);
    this._send(sub._frame());
    return sub;
  }

  publish(subject, body, options = {}) {
    const frame = { subject, body: toBase64(toBytes(body)) };
    if (options.replyTo) frame.reply_to = options.replyTo;
    this._send(frame);
  }

  request(subject, body, options = {}) {
    const timeout = options.timeout ?? this.options.requestTimeout ?? 5000;
    const inbox = `_INBOX.${crypto.randomUUID().replaceAll("-", "")}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.requests.delete(inbox);
        reject(new Error(`request to ${subject} timed out after ${timeout} ms`));
      }, timeout);
      this.requests.set(inbox, { resolve, timer });
      this.publish(subject, body, { replyTo: inbox });
    });
  }

  presence(subject) {
    return new Promise((resolve, reject) => {
      if (!this.socket || this.socket.readyState !== WebSocket.OPEN) {
        reject(new Error(`presence of ${subject}: not connected`));
        return;
      }
      this.presences.push({ subject, resolve, reject });
      if (this.presences.length === 1) this._send({ presence: subject });
    });
  }

  _presenceAnswered(settle) {
    const head = this.presences.shift();
    if (head) settle(head);
    if (this.presences.length) this._send({ presence: this.presences[0].subject });
  }

  close() {
    this.closed = true;
    if (this.timer) { clearTimeout(this.timer); this.timer = null; this._setState("closed", {}); }
    for (const [, request] of this.requests) clearTimeout(request.timer);
    this.requests.clear();
    this.socket?.close(1000, "closed by the page");
  }
}

/** Connects to a listener; the client reconnects by itself until `close()`. */
export function connect(url, options = {}) {
  return new Client(url, options);
}
