// Wire types for the Confab protocol (see the README's WebSocket protocol section).

/** Event ids are integers per the contract; strings ("<ms>-<seq>") are tolerated. */
export type EventId = number | string;

export interface ChatMessage {
  messageId: string;
  /** A username, "assistant", or for open chats "customer" / "agent". */
  sender: string;
  content: string;
  timestamp: string;
}

export interface ConversationSummary {
  conversationId: string;
  title?: string | null;
  members: string[];
  assistant: boolean;
  lastActivity: string;
  createdAt?: string;
}

export interface ConversationDetail {
  conversationId: string;
  messages: ChatMessage[];
  /** Present for member chats only. */
  title?: string | null;
  members?: string[];
  assistant?: boolean;
  lastEventId?: EventId;
}

// ---- client -> server ----------------------------------------------------

export type OpenSender = 'customer' | 'agent';

export type ClientFrame =
  | { type: 'subscribe'; conversationId: string; since?: EventId }
  | { type: 'unsubscribe'; conversationId: string }
  | {
      type: 'send';
      conversationId: string;
      content: string;
      clientId?: string;
      sender?: OpenSender;
      timestamp?: string;
    }
  | { type: 'typing'; conversationId: string; sender?: OpenSender }
  | { type: 'cancel'; conversationId: string }
  | { type: 'ping' };

// ---- server -> client ----------------------------------------------------

export interface SubscribedFrame {
  type: 'subscribed';
  conversationId: string;
  lastEventId: EventId;
  resync?: boolean;
}
export interface MessageFrame {
  type: 'message';
  conversationId: string;
  eventId: EventId;
  message: ChatMessage;
}
export interface MessageDeletedFrame {
  type: 'message_deleted';
  conversationId: string;
  eventId: EventId;
  messageId: string;
}
export interface MemberJoinedFrame {
  type: 'member_joined';
  conversationId: string;
  eventId: EventId;
  username: string;
}
export interface TypingFrame {
  type: 'typing';
  conversationId: string;
  username: string;
}
export interface ConversationExpiredFrame {
  type: 'conversation_expired';
  conversationId: string;
}
export interface ConversationAddedFrame {
  type: 'conversation_added';
  conversation: ConversationSummary;
}
export interface AssistantDeltaFrame {
  type: 'assistant_delta';
  conversationId: string;
  responseId: string;
  seq: number;
  delta: string;
}
export interface AssistantDoneFrame {
  type: 'assistant_done';
  conversationId: string;
  responseId: string;
  messageId: string;
  stopped?: boolean;
  usage?: Record<string, unknown>;
}
export interface AssistantRestartedFrame {
  type: 'assistant_restarted';
  conversationId: string;
  responseId: string;
}
export interface AssistantErrorFrame {
  type: 'assistant_error';
  conversationId: string;
  responseId: string;
  code: string;
  message: string;
}
export interface AckFrame {
  type: 'ack';
  clientId: string;
  messageId: string;
}
export interface PongFrame {
  type: 'pong';
}
export interface ErrorFrame {
  type: 'error';
  code: string;
  message: string;
  ref?: string;
}

export type ServerFrame =
  | SubscribedFrame
  | MessageFrame
  | MessageDeletedFrame
  | MemberJoinedFrame
  | TypingFrame
  | ConversationExpiredFrame
  | ConversationAddedFrame
  | AssistantDeltaFrame
  | AssistantDoneFrame
  | AssistantRestartedFrame
  | AssistantErrorFrame
  | AckFrame
  | PongFrame
  | ErrorFrame;

/** Frames that carry a per-conversation eventId (replayable, deduplicated). */
export type EventFrame = MessageFrame | MessageDeletedFrame | MemberJoinedFrame;

export function isEventFrame(f: ServerFrame): f is EventFrame {
  return (
    (f.type === 'message' || f.type === 'message_deleted' || f.type === 'member_joined') &&
    'eventId' in f &&
    f.eventId !== undefined &&
    f.eventId !== null
  );
}

const KNOWN_TYPES = new Set<string>([
  'subscribed',
  'message',
  'message_deleted',
  'member_joined',
  'typing',
  'conversation_expired',
  'conversation_added',
  'assistant_delta',
  'assistant_done',
  'assistant_restarted',
  'assistant_error',
  'ack',
  'pong',
  'error',
]);

/** Parses a text frame; returns null for anything that is not a known frame. */
export function parseServerFrame(data: unknown): ServerFrame | null {
  if (typeof data !== 'string') return null;
  let v: unknown;
  try {
    v = JSON.parse(data);
  } catch {
    return null;
  }
  if (!v || typeof v !== 'object') return null;
  const type = (v as { type?: unknown }).type;
  if (typeof type !== 'string' || !KNOWN_TYPES.has(type)) return null;
  return v as ServerFrame;
}

/**
 * Orders two event ids. Numbers compare numerically; "123-4" style ids compare
 * part by part; anything else falls back to string order.
 */
export function compareEventIds(a: EventId, b: EventId): number {
  const pa = eventIdParts(a);
  const pb = eventIdParts(b);
  if (pa && pb) {
    for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
      const d = (pa[i] ?? 0) - (pb[i] ?? 0);
      if (d !== 0) return d < 0 ? -1 : 1;
    }
    return 0;
  }
  const sa = String(a);
  const sb = String(b);
  return sa < sb ? -1 : sa > sb ? 1 : 0;
}

function eventIdParts(id: EventId): number[] | null {
  if (typeof id === 'number') return Number.isFinite(id) ? [id] : null;
  if (/^\d+(-\d+)?$/.test(id)) return id.split('-').map(Number);
  return null;
}
