// Types of wsgateway.js, the browser client of the wasmCloud WebSocket messaging provider's
// listener (server mode, format `json`).

/** Where a subscription's recovery starts: the last broadcast it got. */
export interface Since {
  offset: number;
  /** Empty: whatever the listener's history is (with offset 0: all it holds). */
  epoch: string;
}

/** A client of the listener, as presence lists it. */
export interface Member {
  id: string;
  /** The JWT's `sub`, when the client presented one. */
  user: string | null;
  /** When it connected (RFC 3339); in presence answers only. */
  connected_at?: string;
}

export type State = "connecting" | "open" | "reconnecting" | "closed";

export interface StateDetail {
  /** The WebSocket close code, when a connection ended. */
  code?: number;
  reason?: string;
  /** Milliseconds until the next attempt, when reconnecting. */
  delay?: number;
}

export interface ConnectOptions {
  /** A JWT or the listener's auth_token. */
  token?: string;
  /**
   * How the token travels: as the subprotocols `bearer, <token>` (default; it never appears
   * in a URL) or as `?token=` (for tokens with characters a subprotocol cannot hold).
   */
  tokenIn?: "protocol" | "query";
  /** Reconnect delays in ms: the ceiling doubles from `min` to `max`, each delay is half to all of it. */
  backoff?: { min?: number; max?: number };
  /** Default timeout of `request`, in ms (5000). */
  requestTimeout?: number;
  /** Messages published while disconnected that wait for the connection (1000); more go to onError. */
  maxBuffered?: number;
  onState?: (state: State, detail?: StateDetail) => void;
  /** Errors no call waits for: a refused publish, a dropped message, a callback's exception. */
  onError?: (error: Error) => void;
}

export interface SubscribeOptions {
  /** Start from all the listener's history holds (`since` offset 0). */
  history?: boolean;
  /** Start after this broadcast (e.g. one kept from an earlier page). */
  since?: Since;
  /** After each (re)subscribe with `since`: whether everything missed was recovered. */
  onRecovered?: (recovered: boolean) => void;
  /** With the listener's `presence_events`: a client joined or left this pattern. */
  onJoin?: (member: Member) => void;
  onLeave?: (member: Member) => void;
}

export declare class Message {
  readonly subject: string;
  readonly body: Uint8Array;
  readonly replyTo: string | null;
  /** Where the broadcast sits in the listener's history (listeners with history only). */
  readonly offset: number | null;
  readonly epoch: string | null;
  text(): string;
  json<T = unknown>(): T;
  /** Answers a request the component made to this client. */
  respond(body: Body): void;
}

export type Body = string | Uint8Array | ArrayBuffer | object | null | undefined;

export declare class Subscription {
  readonly pattern: string;
  /** The last broadcast seen, where a recovery after a reconnect starts. */
  readonly since: Since | null;
  /** Resolves when the listener took the (latest) subscribe: with `recovered` after a recovery. */
  readonly ready: Promise<boolean>;
  unsubscribe(): void;
}

export declare class Client {
  readonly state: State;
  /** How many times the connection was made again. */
  readonly reconnects: number;
  subscribe(pattern: string, onMessage: (msg: Message) => void, options?: SubscribeOptions): Subscription;
  publish(subject: string, body?: Body, options?: { replyTo?: string }): void;
  request(subject: string, body?: Body, options?: { timeout?: number }): Promise<Message>;
  /** Who is subscribed to a pattern matching `subject`, on every replica (listener key `presence`). */
  presence(subject: string): Promise<Member[]>;
  close(): void;
}

/** Whether NATS-style `pattern` (`*` one token, `>` the rest) matches `subject`. */
export declare function matches(pattern: string, subject: string): boolean;

/** Connects to a listener; the client reconnects by itself until `close()`. */
export declare function connect(url: string, options?: ConnectOptions): Client;
