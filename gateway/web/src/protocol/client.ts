// ConfabSocket: framework-free WebSocket client for the Confab gateway.
//
// - connects (token optional) and reconnects by itself with exponential
//   backoff + jitter;
// - keeps every subscription with the last eventId seen and re-subscribes
//   with `since` after a reconnect, so nothing is missed;
// - drops replayed/duplicate events (eventId <= the last one seen);
// - assembles streamed assistant answers (see assembler.ts);
// - sends a ping keepalive and treats a silent connection as dead;
// - throttles typing frames; correlates `send` with `ack` via clientId.
//
// The WebSocket constructor and the clock/timers are injectable for tests.

import { AssistantAssembler, type AssistantResponse } from './assembler';
import {
  compareEventIds,
  isEventFrame,
  parseServerFrame,
  type ClientFrame,
  type EventId,
  type OpenSender,
  type ServerFrame,
} from './types';

export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketCtor = new (url: string) => WebSocketLike;

export interface Clock {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
}

export const realClock: Clock = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (h) => globalThis.clearTimeout(h as ReturnType<typeof setTimeout>),
  now: () => Date.now(),
};

export type ConnectionStatus = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface StatusInfo {
  status: ConnectionStatus;
  /** Consecutive failed attempts since the last successful open. */
  attempt: number;
  /** When status is "reconnecting": epoch ms of the next attempt. */
  retryAt?: number;
  /** Close code of the last drop, if any. */
  lastCloseCode?: number;
}

export type SocketEvent =
  | { kind: 'status'; info: StatusInfo }
  | { kind: 'frame'; frame: ServerFrame }
  | { kind: 'assistant'; response: AssistantResponse }
  | { kind: 'resync'; conversationId: string }
  | { kind: 'auth_expired' };

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
}

export interface ConfabSocketOptions {
  /** Full ws:// URL (called on every connect so a fresh token can be used). */
  url: string | (() => string);
  WebSocketImpl?: WebSocketCtor;
  clock?: Clock;
  random?: () => number;
  backoff?: Partial<BackoffOptions>;
  /** Interval between pings while open. */
  pingIntervalMs?: number;
  /** No frame at all for this long => the connection is treated as dead. */
  idleTimeoutMs?: number;
  /** Give up on an attempt that has not opened after this long. */
  connectTimeoutMs?: number;
  ackTimeoutMs?: number;
  typingThrottleMs?: number;
  newClientId?: () => string;
}

export class NotConnectedError extends Error {
  constructor() {
    super('Not connected');
    this.name = 'NotConnectedError';
  }
}

export class SendFailedError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = 'SendFailedError';
  }
}

const OPEN = 1;

/** Delay before reconnect attempt number `attempt` (0-based): exp. backoff, half jitter. */
export function backoffDelay(attempt: number, opts: BackoffOptions, random: () => number): number {
  const base = Math.min(opts.maxMs, opts.initialMs * 2 ** Math.min(attempt, 20));
  return Math.round(base / 2 + (random() * base) / 2);
}

interface Subscription {
  lastEventId?: EventId;
  /** Confirmed by a `subscribed` frame on some connection before. */
  confirmedOnce: boolean;
  /** The `since` of the last subscribe frame sent ("none" = sent without one). */
  sentSince?: EventId | 'none';
}

interface PendingAck {
  resolve: (messageId: string) => void;
  reject: (err: Error) => void;
  timer: unknown;
}

export class ConfabSocket {
  readonly assembler = new AssistantAssembler();

  private readonly opts: Required<Omit<ConfabSocketOptions, 'backoff' | 'url'>> & {
    backoff: BackoffOptions;
    url: () => string;
  };
  private ws: WebSocketLike | null = null;
  private subs = new Map<string, Subscription>();
  private listeners = new Set<(e: SocketEvent) => void>();
  private pendingAcks = new Map<string, PendingAck>();
  private lastTyping = new Map<string, number>();
  private info: StatusInfo = { status: 'idle', attempt: 0 };
  private stopped = false;
  private reconnectTimer: unknown = null;
  private pingTimer: unknown = null;
  private connectTimer: unknown = null;
  private lastFrameAt = 0;

  constructor(options: ConfabSocketOptions) {
    const url = options.url;
    const WS =
      options.WebSocketImpl ??
      (globalThis as unknown as { WebSocket?: WebSocketCtor }).WebSocket ??
      null;
    if (!WS) throw new Error('No WebSocket implementation available');
    let counter = 0;
    this.opts = {
      url: typeof url === 'string' ? () => url : url,
      WebSocketImpl: WS,
      clock: options.clock ?? realClock,
      random: options.random ?? Math.random,
      backoff: { initialMs: 500, maxMs: 8000, ...options.backoff },
      pingIntervalMs: options.pingIntervalMs ?? 20_000,
      idleTimeoutMs: options.idleTimeoutMs ?? 50_000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      ackTimeoutMs: options.ackTimeoutMs ?? 15_000,
      typingThrottleMs: options.typingThrottleMs ?? 2_000,
      newClientId:
        options.newClientId ??
        (() =>
          typeof crypto !== 'undefined' && 'randomUUID' in crypto
            ? crypto.randomUUID()
            : `c${Date.now().toString(36)}${(counter++).toString(36)}`),
    };
  }

  // ---- public API ---------------------------------------------------------

  get status(): StatusInfo {
    return this.info;
  }

  get isOpen(): boolean {
    return this.ws !== null && this.ws.readyState === OPEN && this.info.status === 'open';
  }

  on(listener: (e: SocketEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  connect(): void {
    this.stopped = false;
    if (this.ws || this.reconnectTimer !== null) return;
    this.open();
  }

  /** Skip the remaining backoff wait (e.g. the browser came back online). */
  reconnectNow(): void {
    if (this.stopped || this.ws) return;
    if (this.reconnectTimer !== null) {
      this.opts.clock.clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
    }
    this.open();
  }

  /** Close for good (sign out / unmount). */
  close(): void {
    this.stopped = true;
    this.clearTimers();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      detach(ws);
      try {
        ws.close(1000, 'client closing');
      } catch {
        /* ignore */
      }
    }
    this.failPending(new NotConnectedError());
    this.setStatus({ status: 'closed', attempt: 0 });
  }

  /** Subscribe (or keep subscribed); `since` = last eventId already known (e.g. from REST). */
  subscribe(conversationId: string, since?: EventId): void {
    const existing = this.subs.get(conversationId);
    if (existing) {
      if (since !== undefined) this.advance(existing, since);
      return;
    }
    const sub: Subscription = { lastEventId: since, confirmedOnce: false };
    this.subs.set(conversationId, sub);
    if (this.isOpen) this.sendSubscribe(conversationId, sub);
  }

  unsubscribe(conversationId: string): void {
    if (!this.subs.delete(conversationId)) return;
    this.assembler.clearConversation(conversationId);
    if (this.isOpen) this.raw({ type: 'unsubscribe', conversationId });
  }

  isSubscribed(conversationId: string): boolean {
    return this.subs.has(conversationId);
  }

  lastEventId(conversationId: string): EventId | undefined {
    return this.subs.get(conversationId)?.lastEventId;
  }

  /** Raise the high-water mark (after a REST refetch covered events up to `id`). */
  setLastEventId(conversationId: string, id: EventId): void {
    const sub = this.subs.get(conversationId);
    if (sub) this.advance(sub, id);
  }

  /** Sends a chat message over the socket; resolves with the stored messageId on ack. */
  sendMessage(args: {
    conversationId: string;
    content: string;
    sender?: OpenSender;
    timestamp?: string;
    clientId?: string;
  }): Promise<string> {
    if (!this.isOpen) return Promise.reject(new NotConnectedError());
    const clientId = args.clientId ?? this.opts.newClientId();
    const frame: ClientFrame = {
      type: 'send',
      conversationId: args.conversationId,
      content: args.content,
      clientId,
    };
    if (args.sender) frame.sender = args.sender;
    if (args.timestamp) frame.timestamp = args.timestamp;
    return new Promise<string>((resolve, reject) => {
      const timer = this.opts.clock.setTimeout(() => {
        this.pendingAcks.delete(clientId);
        reject(new SendFailedError('No acknowledgement from the server', 'timeout'));
      }, this.opts.ackTimeoutMs);
      this.pendingAcks.set(clientId, { resolve, reject, timer });
      if (!this.raw(frame)) {
        this.opts.clock.clearTimeout(timer);
        this.pendingAcks.delete(clientId);
        reject(new NotConnectedError());
      }
    });
  }

  /**
   * Sends a typing frame unless one went out for this chat in the last 2 s.
   * Open chats name the role being typed as (customer / agent).
   */
  typing(conversationId: string, sender?: OpenSender): boolean {
    const now = this.opts.clock.now();
    const last = this.lastTyping.get(conversationId);
    if (last !== undefined && now - last < this.opts.typingThrottleMs) return false;
    const frame: ClientFrame = { type: 'typing', conversationId };
    if (sender) frame.sender = sender;
    if (!this.raw(frame)) return false;
    this.lastTyping.set(conversationId, now);
    return true;
  }

  /** Asks the server to stop the assistant's current answer. */
  cancel(conversationId: string): boolean {
    return this.raw({ type: 'cancel', conversationId });
  }

  /** Sends any client frame; false when not connected. */
  raw(frame: ClientFrame): boolean {
    if (!this.ws || this.ws.readyState !== OPEN) return false;
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // ---- connection lifecycle ------------------------------------------------

  private open(): void {
    this.reconnectTimer = null;
    const reconnecting = this.info.attempt > 0 || this.info.lastCloseCode !== undefined;
    this.setStatus({ ...this.info, status: reconnecting ? 'reconnecting' : 'connecting', retryAt: undefined });
    let ws: WebSocketLike;
    try {
      ws = new this.opts.WebSocketImpl(this.opts.url());
    } catch {
      this.scheduleReconnect(undefined);
      return;
    }
    this.ws = ws;
    this.connectTimer = this.opts.clock.setTimeout(() => {
      this.connectTimer = null;
      if (this.ws === ws && ws.readyState !== OPEN) this.drop(ws, undefined);
    }, this.opts.connectTimeoutMs);

    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.clearConnectTimer();
      this.lastFrameAt = this.opts.clock.now();
      this.setStatus({ status: 'open', attempt: 0, lastCloseCode: this.info.lastCloseCode });
      for (const [id, sub] of this.subs) this.sendSubscribe(id, sub);
      this.schedulePing();
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastFrameAt = this.opts.clock.now();
      const frame = parseServerFrame(ev.data);
      if (frame) this.handleFrame(frame);
    };
    ws.onerror = () => {
      /* a close event always follows */
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.drop(ws, ev?.code);
    };
  }

  private drop(ws: WebSocketLike, code: number | undefined): void {
    detach(ws);
    try {
      ws.close();
    } catch {
      /* ignore */
    }
    this.ws = null;
    this.clearConnectTimer();
    this.clearPing();
    this.failPending(new NotConnectedError());
    if (this.stopped) return;
    if (code === 4001) {
      this.stopped = true;
      this.setStatus({ status: 'closed', attempt: 0, lastCloseCode: code });
      this.emit({ kind: 'auth_expired' });
      return;
    }
    this.scheduleReconnect(code);
  }

  private scheduleReconnect(code: number | undefined): void {
    const attempt = this.info.status === 'open' ? 0 : this.info.attempt;
    let delay = backoffDelay(attempt, this.opts.backoff, this.opts.random);
    if (code === 4008) delay = Math.min(delay, 250); // slow consumer: resume right away
    if (code === 4029) delay = Math.max(delay, 5_000); // rate limited: back off harder
    const now = this.opts.clock.now();
    this.setStatus({
      status: 'reconnecting',
      attempt: attempt + 1,
      retryAt: now + delay,
      lastCloseCode: code ?? this.info.lastCloseCode,
    });
    this.reconnectTimer = this.opts.clock.setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.stopped) this.open();
    }, delay);
  }

  private schedulePing(): void {
    this.clearPing();
    this.pingTimer = this.opts.clock.setTimeout(() => {
      this.pingTimer = null;
      const ws = this.ws;
      if (!ws || ws.readyState !== OPEN) return;
      if (this.opts.clock.now() - this.lastFrameAt >= this.opts.idleTimeoutMs) {
        this.drop(ws, undefined); // silent for too long: assume the link is dead
        return;
      }
      this.raw({ type: 'ping' });
      this.schedulePing();
    }, this.opts.pingIntervalMs);
  }

  private sendSubscribe(conversationId: string, sub: Subscription): void {
    const frame: ClientFrame = { type: 'subscribe', conversationId };
    if (sub.lastEventId !== undefined) frame.since = sub.lastEventId;
    if (this.raw(frame)) sub.sentSince = sub.lastEventId ?? 'none';
  }

  // ---- inbound frames ------------------------------------------------------

  private handleFrame(frame: ServerFrame): void {
    switch (frame.type) {
      case 'subscribed': {
        const sub = this.subs.get(frame.conversationId);
        let needResync = !!frame.resync;
        if (sub) {
          let resync = !!frame.resync;
          if (frame.resync) {
            sub.lastEventId = frame.lastEventId;
          } else if (sub.lastEventId === undefined) {
            if (frame.lastEventId !== undefined) sub.lastEventId = frame.lastEventId;
          } else if (
            sub.sentSince === 'none' &&
            frame.lastEventId !== undefined &&
            compareEventIds(frame.lastEventId, sub.lastEventId) > 0
          ) {
            // Subscribed without `since`, and meanwhile a REST snapshot told us an older
            // position: the events in between were neither in the snapshot nor replayed.
            sub.lastEventId = frame.lastEventId;
            resync = true;
          }
          sub.sentSince = undefined;
          if (sub.confirmedOnce) {
            for (const r of this.assembler.resubscribed(frame.conversationId)) {
              this.emit({ kind: 'assistant', response: r });
            }
          }
          sub.confirmedOnce = true;
          needResync = resync;
        }
        this.emit({ kind: 'frame', frame });
        if (needResync) this.emit({ kind: 'resync', conversationId: frame.conversationId });
        return;
      }
      case 'assistant_delta': {
        const r = this.assembler.delta(frame);
        if (r) this.emit({ kind: 'assistant', response: r });
        return;
      }
      case 'assistant_done':
        this.emit({ kind: 'assistant', response: this.assembler.done(frame) });
        return;
      case 'assistant_restarted':
        this.emit({ kind: 'assistant', response: this.assembler.restarted(frame) });
        return;
      case 'assistant_error':
        this.emit({ kind: 'assistant', response: this.assembler.error(frame) });
        return;
      case 'ack': {
        const p = this.pendingAcks.get(frame.clientId);
        if (p) {
          this.pendingAcks.delete(frame.clientId);
          this.opts.clock.clearTimeout(p.timer);
          p.resolve(frame.messageId);
        }
        this.emit({ kind: 'frame', frame });
        return;
      }
      case 'error': {
        const p = frame.ref ? this.pendingAcks.get(frame.ref) : undefined;
        if (p && frame.ref) {
          this.pendingAcks.delete(frame.ref);
          this.opts.clock.clearTimeout(p.timer);
          p.reject(new SendFailedError(frame.message, frame.code));
        }
        this.emit({ kind: 'frame', frame });
        return;
      }
      case 'pong':
        return;
      case 'conversation_expired':
        this.emit({ kind: 'frame', frame });
        return;
      default:
        break;
    }
    if (isEventFrame(frame)) {
      const sub = this.subs.get(frame.conversationId);
      if (!sub) return; // not (or no longer) subscribed
      if (sub.lastEventId !== undefined && compareEventIds(frame.eventId, sub.lastEventId) <= 0) {
        return; // already seen (replay overlap / duplicate delivery)
      }
      sub.lastEventId = frame.eventId;
    }
    this.emit({ kind: 'frame', frame });
  }

  // ---- helpers -------------------------------------------------------------

  private advance(sub: Subscription, id: EventId): void {
    if (sub.lastEventId === undefined || compareEventIds(id, sub.lastEventId) > 0) {
      sub.lastEventId = id;
    }
  }

  private emit(e: SocketEvent): void {
    for (const l of [...this.listeners]) {
      try {
        l(e);
      } catch (err) {
        console.error('ConfabSocket listener failed', err);
      }
    }
  }

  private setStatus(info: StatusInfo): void {
    this.info = info;
    this.emit({ kind: 'status', info });
  }

  private failPending(err: Error): void {
    for (const [id, p] of this.pendingAcks) {
      this.opts.clock.clearTimeout(p.timer);
      this.pendingAcks.delete(id);
      p.reject(err);
    }
  }

  private clearConnectTimer(): void {
    if (this.connectTimer !== null) {
      this.opts.clock.clearTimeout(this.connectTimer);
      this.connectTimer = null;
    }
  }

  private clearPing(): void {
    if (this.pingTimer !== null) {
      this.opts.clock.clearTimeout(this.pingTimer);
      this.pingTimer = null;
    }
  }

  private clearTimers(): void {
    this.clearConnectTimer();
    this.clearPing();
    if (this.reconnectTimer !== null) {
      this.opts.clock.clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
    }
  }
}

function detach(ws: WebSocketLike): void {
  ws.onopen = null;
  ws.onclose = null;
  ws.onmessage = null;
  ws.onerror = null;
}

/** ws(s)://host/ws?token=… for the current page's origin. */
export function gatewaySocketUrl(token: string | null | undefined, loc: Location = location): string {
  const proto = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  const q = token ? `?token=${encodeURIComponent(token)}` : '';
  return `${proto}//${loc.host}/ws${q}`;
}
