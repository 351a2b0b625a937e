// ChatStore: the app's state, fed by the REST API and a ConfabSocket.
// Framework-free; React reads it through useSyncExternalStore (see useStore.ts).
// Every change produces new objects for what changed (structural sharing).

import type { AssistantResponse } from '../protocol/assembler';
import { ApiError, type Api } from '../protocol/api';
import {
  NotConnectedError,
  SendFailedError,
  realClock,
  type Clock,
  type ConfabSocket,
  type SocketEvent,
  type StatusInfo,
} from '../protocol/client';
import {
  compareEventIds,
  type ChatMessage,
  type ConversationDetail,
  type ConversationSummary,
  type OpenSender,
  type ServerFrame,
} from '../protocol/types';

export const TYPING_VISIBLE_MS = 3_000;
const PENDING_GIVE_UP_MS = 12_000;

export interface TimelineNote {
  kind: 'note';
  id: string;
  text: string;
  at: string;
}
export interface TimelineMessage {
  kind: 'message';
  message: ChatMessage;
}
export type TimelineItem = TimelineMessage | TimelineNote;

export interface PendingMessage {
  clientId: string;
  content: string;
  sender: string;
  timestamp: string;
  status: 'sending' | 'failed';
  error?: string;
  /** Known once acked; the pending bubble disappears when that message shows up. */
  messageId?: string;
}

export interface ConversationState {
  id: string;
  /** "member" chats have members/title; "open" (seed-style) chats do not. */
  kind: 'member' | 'open' | 'unknown';
  title?: string | null;
  members: string[];
  assistant: boolean;
  items: TimelineItem[];
  loaded: boolean;
  loading: boolean;
  notFound: boolean;
  loadError?: string;
  expired: boolean;
  /** username -> epoch ms until which "is typing…" shows. */
  typing: Record<string, number>;
  /** Assistant answers not (yet) replaced by their stored message, oldest first. */
  responses: AssistantResponse[];
  /** messageIds of assistant answers that were stopped. */
  stopped: Record<string, true>;
  pending: PendingMessage[];
  unread: number;
}

export interface AppState {
  me: string | null;
  connection: StatusInfo;
  conversations: ConversationSummary[];
  listLoaded: boolean;
  listError?: string;
  convs: Record<string, ConversationState>;
  activeId: string | null;
  authExpired: boolean;
}

export function emptyConversation(id: string): ConversationState {
  return {
    id,
    kind: 'unknown',
    members: [],
    assistant: false,
    items: [],
    loaded: false,
    loading: false,
    notFound: false,
    expired: false,
    typing: {},
    responses: [],
    stopped: {},
    pending: [],
    unread: 0,
  };
}

export function conversationTitle(
  c: { title?: string | null; members?: string[]; conversationId?: string; id?: string },
  me: string | null,
): string {
  if (c.title && c.title.trim()) return c.title.trim();
  const others = (c.members ?? []).filter((m) => m !== me);
  if (others.length) return others.join(', ');
  return me && c.members?.length ? 'Just you' : `Conversation ${(c.conversationId ?? c.id ?? '').slice(0, 8)}`;
}

export function hasMessage(conv: ConversationState, messageId: string): boolean {
  return conv.items.some((i) => i.kind === 'message' && i.message.messageId === messageId);
}

/** Newest activity first. */
export function sortConversations(list: ConversationSummary[]): ConversationSummary[] {
  return [...list].sort((a, b) => time(b.lastActivity) - time(a.lastActivity));
}

function time(s: string | undefined): number {
  const t = s ? Date.parse(s) : NaN;
  return Number.isNaN(t) ? 0 : t;
}

/** Merge REST messages with what we already hold: dedupe by messageId, keep newer live ones. */
export function mergeHistory(existing: TimelineItem[], fetched: ChatMessage[]): TimelineItem[] {
  const seen = new Set<string>();
  const out: TimelineItem[] = [];
  for (const m of fetched) {
    if (!m || typeof m.messageId !== 'string' || seen.has(m.messageId)) continue;
    seen.add(m.messageId);
    out.push({ kind: 'message', message: m });
  }
  const newest = fetched.reduce((t, m) => Math.max(t, time(m.timestamp)), 0);
  const extra: TimelineItem[] = [];
  for (const it of existing) {
    if (it.kind === 'message') {
      if (seen.has(it.message.messageId)) continue;
      // Not in the snapshot: keep it only if it is newer (arrived live after the fetch).
      if (time(it.message.timestamp) < newest) continue;
      seen.add(it.message.messageId);
    }
    extra.push(it);
  }
  const all = [...out, ...extra];
  // Stable sort by time so notes land near the messages they followed.
  return all
    .map((it, idx) => ({ it, idx, t: time(it.kind === 'message' ? it.message.timestamp : it.at) }))
    .sort((a, b) => a.t - b.t || a.idx - b.idx)
    .map((x) => x.it);
}

type Listener = () => void;

export interface ChatStoreOptions {
  api: Api;
  socket: ConfabSocket;
  me: string | null;
  clock?: Clock;
  newClientId?: () => string;
  /** Called when the session is no longer valid (401 / close 4001). */
  onAuthExpired?: () => void;
}

export class ChatStore {
  private state: AppState;
  private listeners = new Set<Listener>();
  private readonly api: Api;
  private readonly socket: ConfabSocket;
  private readonly clock: Clock;
  private readonly newClientId: () => string;
  private unlisten: (() => void) | null = null;
  private typingTimers = new Map<string, unknown>();
  private pendingTimers = new Map<string, unknown>();
  private loadSeq = new Map<string, number>();
  /** Open chats: the role we last typed as, to ignore the server echoing our own typing. */
  private ownTyping = new Map<string, { role: string; at: number }>();
  private idCounter = 0;

  constructor(private readonly opts: ChatStoreOptions) {
    this.api = opts.api;
    this.socket = opts.socket;
    this.clock = opts.clock ?? realClock;
    this.newClientId =
      opts.newClientId ??
      (() =>
        typeof crypto !== 'undefined' && 'randomUUID' in crypto
          ? crypto.randomUUID()
          : `p${Date.now().toString(36)}${(this.idCounter++).toString(36)}`);
    this.state = {
      me: opts.me,
      connection: this.socket.status,
      conversations: [],
      listLoaded: false,
      convs: {},
      activeId: null,
      authExpired: false,
    };
  }

  // ---- subscription (useSyncExternalStore) --------------------------------

  getState = (): AppState => this.state;

  subscribe = (l: Listener): (() => void) => {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  };

  private set(next: AppState): void {
    if (next === this.state) return;
    this.state = next;
    for (const l of [...this.listeners]) l();
  }

  private patchConv(id: string, fn: (c: ConversationState) => ConversationState): void {
    const cur = this.state.convs[id] ?? emptyConversation(id);
    const next = fn(cur);
    if (next === cur && this.state.convs[id]) return;
    this.set({ ...this.state, convs: { ...this.state.convs, [id]: next } });
  }

  // ---- lifecycle -----------------------------------------------------------

  start(): void {
    if (this.unlisten) return;
    this.unlisten = this.socket.on((e) => this.onSocket(e));
    this.socket.connect();
    if (this.state.me) void this.loadList();
  }

  /** Skip the reconnect backoff wait (browser back online / "Retry now"). */
  reconnectNow(): void {
    this.socket.reconnectNow();
  }

  dispose(): void {
    this.unlisten?.();
    this.unlisten = null;
    this.socket.close();
    for (const t of this.typingTimers.values()) this.clock.clearTimeout(t);
    for (const t of this.pendingTimers.values()) this.clock.clearTimeout(t);
    this.typingTimers.clear();
    this.pendingTimers.clear();
  }

  // ---- conversation list ---------------------------------------------------

  async loadList(): Promise<void> {
    try {
      const list = await this.api.listConversations();
      const byId = new Map<string, ConversationSummary>();
      for (const c of this.state.conversations) byId.set(c.conversationId, c);
      for (const c of list) byId.set(c.conversationId, { ...byId.get(c.conversationId), ...c });
      this.set({
        ...this.state,
        conversations: sortConversations([...byId.values()]),
        listLoaded: true,
        listError: undefined,
      });
      // Subscribe to every chat so the list (order, unread) stays live.
      for (const c of list) this.socket.subscribe(c.conversationId);
    } catch (err) {
      this.set({ ...this.state, listLoaded: true, listError: errorText(err) });
    }
  }

  private upsertSummary(c: ConversationSummary): void {
    const others = this.state.conversations.filter((x) => x.conversationId !== c.conversationId);
    const prev = this.state.conversations.find((x) => x.conversationId === c.conversationId);
    this.set({ ...this.state, conversations: sortConversations([...others, { ...prev, ...c }]) });
  }

  private touchSummary(id: string, at: string): void {
    const prev = this.state.conversations.find((x) => x.conversationId === id);
    if (!prev) return;
    if (time(at) <= time(prev.lastActivity)) return;
    this.upsertSummary({ ...prev, lastActivity: at });
  }

  // ---- one conversation ----------------------------------------------------

  /** Marks a chat as the one on screen (clears unread) and loads it if needed. */
  open(id: string | null): void {
    this.set({ ...this.state, activeId: id });
    if (!id) return;
    this.patchConv(id, (c) => (c.unread ? { ...c, unread: 0 } : c));
    const c = this.state.convs[id];
    if (!c || (!c.loaded && !c.loading)) void this.load(id);
  }

  async load(id: string, retry = true): Promise<void> {
    const seq = (this.loadSeq.get(id) ?? 0) + 1;
    this.loadSeq.set(id, seq);
    this.patchConv(id, (c) => ({ ...c, loading: true, loadError: undefined }));
    let detail: ConversationDetail;
    try {
      detail = await this.api.getConversation(id);
    } catch (err) {
      if (this.loadSeq.get(id) !== seq) return;
      const notFound = err instanceof ApiError && err.status === 404;
      this.patchConv(id, (c) => ({
        ...c,
        loading: false,
        loaded: false,
        notFound,
        loadError: notFound ? undefined : errorText(err),
      }));
      return;
    }
    if (this.loadSeq.get(id) !== seq) return;
    const isMember = Array.isArray(detail.members);
    const messages = Array.isArray(detail.messages) ? detail.messages : [];
    this.patchConv(id, (c) => {
      const items = mergeHistory(c.items, messages);
      const next: ConversationState = {
        ...c,
        kind: isMember ? 'member' : 'open',
        title: isMember ? (detail.title ?? null) : c.title,
        members: isMember ? (detail.members ?? []) : c.members,
        assistant: detail.assistant ?? c.assistant,
        items,
        loaded: true,
        loading: false,
        notFound: false,
        loadError: undefined,
      };
      return this.reconcileResponses(next);
    });
    if (!this.state.convs[id]?.expired) {
      // since = the last event the snapshot covers; the socket replays anything newer.
      const live = this.socket.lastEventId(id);
      this.socket.subscribe(id, detail.lastEventId);
      if (detail.lastEventId !== undefined) this.socket.setLastEventId(id, detail.lastEventId);
      // Already subscribed (from the chat list) past the snapshot's position: events in
      // between may have been neither live nor in the snapshot. Fetch once more.
      if (
        retry &&
        live !== undefined &&
        detail.lastEventId !== undefined &&
        compareEventIds(live, detail.lastEventId) > 0
      ) {
        await this.load(id, false);
      }
    }
  }

  /** `again` (a retry) keeps the first attempt's clientId and timestamp: the clientId is the
   * message's idempotency key, so the server stores it once however often it is sent. */
  async send(
    id: string,
    content: string,
    sender?: OpenSender,
    again?: { clientId: string; timestamp: string },
  ): Promise<void> {
    const text = content.replace(/\s+$/, '');
    if (!text.trim()) return;
    const conv = this.state.convs[id];
    const openChat = conv?.kind === 'open';
    const who = openChat ? (sender ?? 'customer') : (this.state.me ?? sender ?? 'customer');
    const timestamp = again?.timestamp ?? new Date(this.clock.now()).toISOString();
    const clientId = again?.clientId ?? this.newClientId();
    const pending: PendingMessage = { clientId, content: text, sender: who, timestamp, status: 'sending' };
    this.patchConv(id, (c) => ({ ...c, pending: [...c.pending, pending] }));
    const openSender = openChat ? (sender ?? 'customer') : undefined;
    try {
      let messageId: string;
      if (this.socket.isOpen) {
        messageId = await this.socket.sendMessage({
          conversationId: id,
          content: text,
          clientId,
          sender: openSender,
          timestamp: openChat ? timestamp : undefined,
        });
      } else {
        const r = await this.api.postMessage(
          id,
          {
            content: text,
            timestamp,
            ...(openSender ? { sender: openSender } : {}),
          },
          clientId,
        );
        messageId = r.messageId;
      }
      this.acked(id, clientId, messageId, { ...pending, messageId });
    } catch (err) {
      if (err instanceof NotConnectedError) {
        // Sent but unconfirmed: the replay after reconnect will show it if it was stored.
        this.armPendingTimeout(id, clientId);
        return;
      }
      this.failPending(id, clientId, errorText(err));
    }
  }

  retry(id: string, clientId: string): void {
    const p = this.state.convs[id]?.pending.find((x) => x.clientId === clientId);
    if (!p) return;
    this.dismiss(id, clientId);
    const openChat = this.state.convs[id]?.kind === 'open';
    void this.send(id, p.content, openChat ? (p.sender as OpenSender) : undefined, {
      clientId: p.clientId,
      timestamp: p.timestamp,
    });
  }

  dismiss(id: string, clientId: string): void {
    this.patchConv(id, (c) => ({ ...c, pending: c.pending.filter((p) => p.clientId !== clientId) }));
  }

  typing(id: string, sender?: OpenSender): void {
    const openChat = this.state.convs[id]?.kind === 'open';
    if (this.socket.typing(id, openChat ? (sender ?? 'customer') : undefined) && openChat) {
      this.ownTyping.set(id, { role: sender ?? 'customer', at: this.clock.now() });
    }
  }

  async stop(id: string): Promise<void> {
    if (this.socket.cancel(id)) return;
    try {
      await this.api.cancelAssistant(id);
    } catch {
      /* nothing more to do */
    }
  }

  async invite(id: string, username: string): Promise<void> {
    const r = await this.api.addMember(id, username);
    if (Array.isArray(r.members)) {
      this.patchConv(id, (c) => ({ ...c, members: r.members }));
      const s = this.state.conversations.find((x) => x.conversationId === id);
      if (s) this.upsertSummary({ ...s, members: r.members });
    }
  }

  async createConversation(title: string, members: string[], assistant = true): Promise<string> {
    const body: { title?: string; members: string[]; assistant: boolean } = { members, assistant };
    if (title.trim()) body.title = title.trim();
    const { conversationId } = await this.api.createConversation(body);
    const now = new Date(this.clock.now()).toISOString();
    if (!this.state.conversations.some((c) => c.conversationId === conversationId)) {
      this.upsertSummary({
        conversationId,
        title: body.title ?? null,
        members: [...new Set([...(this.state.me ? [this.state.me] : []), ...members])],
        assistant,
        lastActivity: now,
        createdAt: now,
      });
    }
    this.socket.subscribe(conversationId);
    void this.loadList();
    return conversationId;
  }

  // ---- socket events -------------------------------------------------------

  private onSocket(e: SocketEvent): void {
    switch (e.kind) {
      case 'status':
        this.set({ ...this.state, connection: e.info });
        return;
      case 'auth_expired':
        this.set({ ...this.state, authExpired: true });
        this.opts.onAuthExpired?.();
        return;
      case 'resync': {
        const c = this.state.convs[e.conversationId];
        if (c?.loaded || this.state.activeId === e.conversationId) void this.load(e.conversationId);
        return;
      }
      case 'assistant':
        this.onAssistant(e.response);
        return;
      case 'frame':
        this.onFrame(e.frame);
        return;
    }
  }

  private onFrame(f: ServerFrame): void {
    switch (f.type) {
      case 'message':
        this.onMessage(f.conversationId, f.message);
        return;
      case 'message_deleted':
        this.patchConv(f.conversationId, (c) => ({
          ...c,
          items: c.items.filter((i) => !(i.kind === 'message' && i.message.messageId === f.messageId)),
        }));
        return;
      case 'member_joined': {
        const at = new Date(this.clock.now()).toISOString();
        this.patchConv(f.conversationId, (c) =>
          c.members.includes(f.username)
            ? c
            : {
                ...c,
                members: [...c.members, f.username],
                items: [
                  ...c.items,
                  { kind: 'note', id: `join-${String(f.eventId)}`, text: `${f.username} joined`, at },
                ],
              },
        );
        const s = this.state.conversations.find((x) => x.conversationId === f.conversationId);
        if (s && !s.members.includes(f.username)) {
          this.upsertSummary({ ...s, members: [...s.members, f.username] });
        }
        return;
      }
      case 'typing':
        this.onTyping(f.conversationId, f.username);
        return;
      case 'conversation_expired':
        this.patchConv(f.conversationId, (c) => ({ ...c, expired: true, typing: {}, responses: [] }));
        this.socket.unsubscribe(f.conversationId);
        return;
      case 'conversation_added':
        if (f.conversation?.conversationId) {
          this.upsertSummary(f.conversation);
          this.socket.subscribe(f.conversation.conversationId);
        }
        return;
      default:
        return;
    }
  }

  private onMessage(id: string, m: ChatMessage): void {
    if (!m || typeof m.messageId !== 'string') return;
    const conv = this.state.convs[id] ?? emptyConversation(id);
    if (hasMessage(conv, m.messageId)) return; // duplicate delivery
    const mine = this.isMine(conv, m.sender);
    const isActive = this.state.activeId === id;
    this.patchConv(id, (c) => {
      const typing = { ...c.typing };
      delete typing[m.sender];
      let pending = c.pending;
      const byId = pending.findIndex((p) => p.messageId === m.messageId);
      if (byId >= 0) pending = pending.filter((_, i) => i !== byId);
      else {
        // Message event before our ack: match the oldest unacked bubble with the same text.
        const idx = pending.findIndex((p) => !p.messageId && p.sender === m.sender && p.content === m.content);
        if (idx >= 0) pending = pending.filter((_, i) => i !== idx);
      }
      const next: ConversationState = {
        ...c,
        items: [...c.items, { kind: 'message', message: m }],
        typing,
        pending,
        unread: isActive || mine ? c.unread : c.unread + 1,
      };
      return m.sender === 'assistant' ? this.reconcileResponses(next, m) : next;
    });
    this.touchSummary(id, m.timestamp || new Date(this.clock.now()).toISOString());
  }

  private isMine(conv: ConversationState, sender: string): boolean {
    if (conv.kind === 'open') return false;
    return !!this.state.me && sender === this.state.me;
  }

  private onTyping(id: string, username: string): void {
    if (!username || username === this.state.me) return;
    const own = this.ownTyping.get(id);
    if (own && own.role === username && this.clock.now() - own.at < TYPING_VISIBLE_MS) return;
    const until = this.clock.now() + TYPING_VISIBLE_MS;
    this.patchConv(id, (c) => ({ ...c, typing: { ...c.typing, [username]: until } }));
    const key = `${id}\u0000${username}`;
    const old = this.typingTimers.get(key);
    if (old !== undefined) this.clock.clearTimeout(old);
    this.typingTimers.set(
      key,
      this.clock.setTimeout(() => {
        this.typingTimers.delete(key);
        this.patchConv(id, (c) => {
          const t = c.typing[username];
          if (t === undefined || t > this.clock.now()) return c;
          const typing = { ...c.typing };
          delete typing[username];
          return { ...c, typing };
        });
      }, TYPING_VISIBLE_MS),
    );
  }

  private onAssistant(r: AssistantResponse): void {
    this.patchConv(r.conversationId, (c) => {
      const idx = c.responses.findIndex((x) => x.responseId === r.responseId);
      const responses = idx >= 0 ? c.responses.map((x, i) => (i === idx ? r : x)) : [...c.responses, r];
      const stopped = r.status === 'stopped' && r.messageId ? { ...c.stopped, [r.messageId]: true as const } : c.stopped;
      const typing = { ...c.typing };
      delete typing.assistant;
      return this.reconcileResponses({ ...c, responses, stopped, typing });
    });
  }

  /**
   * Drops streaming bubbles whose stored message is on screen:
   * by messageId (from assistant_done), or — when the message event came
   * first — by identical text, or an answer that finished while we were away.
   */
  private reconcileResponses(c: ConversationState, arrived?: ChatMessage): ConversationState {
    if (!c.responses.length) return c;
    const ids = new Set<string>();
    for (const i of c.items) if (i.kind === 'message') ids.add(i.message.messageId);
    let matchedArrived = false;
    const keep: AssistantResponse[] = [];
    for (const r of c.responses) {
      if (r.messageId && ids.has(r.messageId)) {
        this.socket.assembler.remove(r.responseId);
        if (arrived && r.messageId === arrived.messageId) matchedArrived = true;
        continue;
      }
      keep.push(r);
    }
    if (arrived && !matchedArrived) {
      const body = arrived.content.trim();
      let idx = keep.findIndex((r) => !r.messageId && r.status !== 'error' && r.text.trim() === body && body !== '');
      if (idx < 0) idx = keep.findIndex((r) => r.stale && !r.messageId);
      if (idx >= 0) {
        this.socket.assembler.remove(keep[idx]!.responseId);
        keep.splice(idx, 1);
      }
    }
    return keep.length === c.responses.length ? c : { ...c, responses: keep };
  }

  // ---- pending sends -------------------------------------------------------

  private acked(id: string, clientId: string, messageId: string, p: PendingMessage): void {
    this.clearPendingTimer(clientId);
    this.patchConv(id, (c) => {
      if (hasMessage(c, messageId)) {
        return { ...c, pending: c.pending.filter((x) => x.clientId !== clientId) };
      }
      if (!c.pending.some((x) => x.clientId === clientId)) return c; // already matched by content
      return { ...c, pending: c.pending.map((x) => (x.clientId === clientId ? { ...p, messageId } : x)) };
    });
    this.armPendingTimeout(id, clientId);
  }

  private armPendingTimeout(id: string, clientId: string): void {
    this.clearPendingTimer(clientId);
    this.pendingTimers.set(
      clientId,
      this.clock.setTimeout(() => {
        this.pendingTimers.delete(clientId);
        const c = this.state.convs[id];
        const p = c?.pending.find((x) => x.clientId === clientId);
        if (!p) return;
        if (p.messageId) {
          // Stored (acked) but its event never reached us: show it as a message anyway.
          this.patchConv(id, (cc) => ({
            ...cc,
            pending: cc.pending.filter((x) => x.clientId !== clientId),
            items: hasMessage(cc, p.messageId!)
              ? cc.items
              : [
                  ...cc.items,
                  {
                    kind: 'message',
                    message: { messageId: p.messageId!, sender: p.sender, content: p.content, timestamp: p.timestamp },
                  },
                ],
          }));
          return;
        }
        this.failPending(id, clientId, 'Not delivered (connection lost).');
      }, PENDING_GIVE_UP_MS),
    );
  }

  private failPending(id: string, clientId: string, error: string): void {
    this.clearPendingTimer(clientId);
    this.patchConv(id, (c) => ({
      ...c,
      pending: c.pending.map((x) => (x.clientId === clientId ? { ...x, status: 'failed', error } : x)),
    }));
  }

  private clearPendingTimer(clientId: string): void {
    const t = this.pendingTimers.get(clientId);
    if (t !== undefined) {
      this.clock.clearTimeout(t);
      this.pendingTimers.delete(clientId);
    }
  }
}

export function errorText(err: unknown): string {
  if (err instanceof ApiError || err instanceof SendFailedError) return err.message;
  if (err instanceof NotConnectedError) return 'Not connected.';
  if (err instanceof Error) return err.message;
  return 'Something went wrong.';
}
