// Assembles streamed assistant answers (assistant_delta frames) by responseId.
//
// Rules (README: WebSocket protocol): seq starts at 0 per response. When a client subscribes
// mid-answer, the server first sends one delta holding the whole text so far
// whose seq is the last seq it covers, then live deltas with higher seq; any
// seq <= the one already held is dropped. Deltas that arrive ahead of a gap
// are buffered until the gap is filled.

import type {
  AssistantDeltaFrame,
  AssistantDoneFrame,
  AssistantErrorFrame,
  AssistantRestartedFrame,
} from './types';

export type AssistantStatus = 'streaming' | 'done' | 'stopped' | 'error';

/** An immutable view of one assistant response. A new object per change. */
export interface AssistantResponse {
  responseId: string;
  conversationId: string;
  text: string;
  /** Highest contiguous seq included in `text` (-1 = nothing yet). */
  lastSeq: number;
  status: AssistantStatus;
  /** Set once assistant_done names the stored message. */
  messageId?: string;
  error?: { code: string; message: string };
  /** True after a re-subscribe until the server's snapshot (or a live delta) arrives. */
  stale: boolean;
  /** How many times the server restarted this response. */
  restarts: number;
}

interface Entry {
  view: AssistantResponse;
  pending: Map<number, string>;
}

const FINISHED_MEMORY = 500;

export class AssistantAssembler {
  private entries = new Map<string, Entry>();
  private finished = new Set<string>();

  get(responseId: string): AssistantResponse | undefined {
    return this.entries.get(responseId)?.view;
  }

  forConversation(conversationId: string): AssistantResponse[] {
    const out: AssistantResponse[] = [];
    for (const e of this.entries.values()) {
      if (e.view.conversationId === conversationId) out.push(e.view);
    }
    return out;
  }

  /** Returns the updated response, or null when the delta was a duplicate / stale. */
  delta(f: AssistantDeltaFrame): AssistantResponse | null {
    if (typeof f.seq !== 'number' || !Number.isInteger(f.seq) || f.seq < 0) return null;
    const delta = typeof f.delta === 'string' ? f.delta : '';
    if (this.finished.has(f.responseId)) return null;
    const entry = this.entries.get(f.responseId);
    if (!entry) {
      // First sight of this response: the chunk covers everything up to seq
      // (seq 0 = the first token; seq k > 0 = a mid-answer snapshot).
      return this.put({
          view: {
            responseId: f.responseId,
            conversationId: f.conversationId,
            text: delta,
            lastSeq: f.seq,
            status: 'streaming',
            stale: false,
            restarts: 0,
          },
          pending: new Map(),
      });
    }
    const v = entry.view;
    if (v.status !== 'streaming') return null;

    if (v.lastSeq < 0) {
      // Nothing held (just restarted): accept as the start / snapshot.
      entry.pending.clear();
      return this.update(entry, { text: delta, lastSeq: f.seq, stale: false });
    }
    if (f.seq <= v.lastSeq) return null; // duplicate or already covered
    if (v.stale && delta.startsWith(v.text)) {
      // Snapshot after re-subscribe: it covers 0..seq and extends what we hold.
      for (const s of [...entry.pending.keys()]) if (s <= f.seq) entry.pending.delete(s);
      return this.update(entry, this.drain(entry, delta, f.seq));
    }
    if (f.seq === v.lastSeq + 1) {
      return this.update(entry, this.drain(entry, v.text + delta, f.seq));
    }
    // Gap: buffer until the missing seq arrives.
    if (entry.pending.has(f.seq)) return null;
    entry.pending.set(f.seq, delta);
    if (v.stale) return this.update(entry, { stale: false });
    return null;
  }

  done(f: AssistantDoneFrame): AssistantResponse {
    this.remember(f.responseId);
    const entry = this.entries.get(f.responseId) ?? this.blank(f.responseId, f.conversationId);
    entry.pending.clear();
    return this.update(entry, {
      status: f.stopped ? 'stopped' : 'done',
      messageId: f.messageId,
      stale: false,
    });
  }

  restarted(f: AssistantRestartedFrame): AssistantResponse {
    const entry = this.entries.get(f.responseId) ?? this.blank(f.responseId, f.conversationId);
    this.finished.delete(f.responseId);
    entry.pending.clear();
    return this.update(entry, {
      text: '',
      lastSeq: -1,
      status: 'streaming',
      stale: false,
      restarts: entry.view.restarts + 1,
    });
  }

  error(f: AssistantErrorFrame): AssistantResponse {
    this.remember(f.responseId);
    const entry = this.entries.get(f.responseId) ?? this.blank(f.responseId, f.conversationId);
    entry.pending.clear();
    return this.update(entry, {
      status: 'error',
      error: { code: f.code, message: f.message },
      stale: false,
    });
  }

  /**
   * Called when a conversation is (re)subscribed on a new connection: answers
   * still streaming may have advanced while we were away, so the next chunk
   * may be a snapshot.
   */
  resubscribed(conversationId: string): AssistantResponse[] {
    const changed: AssistantResponse[] = [];
    for (const e of this.entries.values()) {
      if (e.view.conversationId === conversationId && e.view.status === 'streaming') {
        changed.push(this.update(e, { stale: true }));
      }
    }
    return changed;
  }

  /** Forget a response (e.g. once its stored message is shown). */
  remove(responseId: string): void {
    this.entries.delete(responseId);
  }

  /** Forget everything about a conversation (unsubscribe / expiry). */
  clearConversation(conversationId: string): void {
    for (const [id, e] of this.entries) {
      if (e.view.conversationId === conversationId) this.entries.delete(id);
    }
  }

  private drain(entry: Entry, text: string, seq: number): Partial<AssistantResponse> {
    let t = text;
    let s = seq;
    for (;;) {
      const next = entry.pending.get(s + 1);
      if (next === undefined) break;
      entry.pending.delete(s + 1);
      t += next;
      s += 1;
    }
    for (const k of [...entry.pending.keys()]) if (k <= s) entry.pending.delete(k);
    return { text: t, lastSeq: s, stale: false };
  }

  private blank(responseId: string, conversationId: string): Entry {
    const e: Entry = {
      view: {
        responseId,
        conversationId,
        text: '',
        lastSeq: -1,
        status: 'streaming',
        stale: false,
        restarts: 0,
      },
      pending: new Map(),
    };
    this.entries.set(responseId, e);
    return e;
  }

  private put(entry: Entry): AssistantResponse {
    this.entries.set(entry.view.responseId, entry);
    return entry.view;
  }

  private update(entry: Entry, patch: Partial<AssistantResponse>): AssistantResponse {
    entry.view = { ...entry.view, ...patch };
    this.entries.set(entry.view.responseId, entry);
    return entry.view;
  }

  private remember(responseId: string): void {
    this.finished.add(responseId);
    if (this.finished.size > FINISHED_MEMORY) {
      const oldest = this.finished.values().next().value;
      if (oldest !== undefined) this.finished.delete(oldest);
    }
  }
}
