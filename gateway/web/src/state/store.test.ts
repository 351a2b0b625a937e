import { beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeClock, FakeWebSocket } from '../test/fakes';
import { ApiError, type Api } from '../protocol/api';
import { ConfabSocket } from '../protocol/client';
import type { ChatMessage, ConversationDetail, ConversationSummary } from '../protocol/types';
import { ChatStore, TYPING_VISIBLE_MS, mergeHistory, type ConversationState } from './store';

const m = (id: string, sender = 'bob', content = `text ${id}`, ts = '2024-01-01T10:00:00Z'): ChatMessage => ({
  messageId: id,
  sender,
  content,
  timestamp: ts,
});

const summary = (id: string, lastActivity: string, members = ['alice', 'bob']): ConversationSummary => ({
  conversationId: id,
  title: '',
  members,
  assistant: true,
  lastActivity,
  createdAt: '2024-01-01T00:00:00Z',
});

function fakeApi(overrides: Partial<Record<keyof Api, unknown>> = {}) {
  const api = {
    listConversations: vi.fn(async () => [] as ConversationSummary[]),
    getConversation: vi.fn(
      async (id: string): Promise<ConversationDetail> => ({
        conversationId: id,
        messages: [],
        title: 'T',
        members: ['alice', 'bob'],
        assistant: true,
        lastEventId: 0,
      }),
    ),
    postMessage: vi.fn(async () => ({ messageId: 'rest-1' })),
    addMember: vi.fn(async () => ({ conversationId: 'c1', members: ['alice', 'bob', 'carol'] })),
    createConversation: vi.fn(async () => ({ conversationId: 'new1' })),
    cancelAssistant: vi.fn(async () => ({})),
    ...overrides,
  };
  return api;
}

async function flush() {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

function setup(api = fakeApi(), me: string | null = 'alice') {
  const clock = new FakeClock();
  let n = 0;
  const socket = new ConfabSocket({
    url: 'ws://t/ws',
    WebSocketImpl: FakeWebSocket,
    clock,
    random: () => 1,
    newClientId: () => `cid${++n}`,
  });
  const store = new ChatStore({ api: api as unknown as Api, socket, me, clock, newClientId: () => `cid${++n}` });
  store.start();
  const ws = () => FakeWebSocket.last;
  const conv = (id = 'c1'): ConversationState => store.getState().convs[id]!;
  const ids = (id = 'c1') =>
    conv(id).items.flatMap((i) => (i.kind === 'message' ? [i.message.messageId] : []));
  return { api, clock, socket, store, ws, conv, ids };
}

beforeEach(() => FakeWebSocket.reset());

describe('ChatStore: history, live events, dedupe', () => {
  it('loads history by REST, subscribes with since=lastEventId, and dedupes by messageId', async () => {
    const api = fakeApi({
      getConversation: vi.fn(async () => ({
        conversationId: 'c1',
        messages: [m('a'), m('b')],
        title: 'Plans',
        members: ['alice', 'bob'],
        assistant: true,
        lastEventId: 12,
      })),
    });
    const { store, ws, ids, conv } = setup(api);
    ws().accept();
    store.open('c1');
    await flush();
    expect(conv().kind).toBe('member');
    expect(conv().title).toBe('Plans');
    expect(ws().framesOfType('subscribe')).toEqual([{ type: 'subscribe', conversationId: 'c1', since: 12 }]);
    ws().emit({ type: 'subscribed', conversationId: 'c1', lastEventId: 12 });
    // The same message again under a new eventId (e.g. REST raced the event) shows once.
    ws().emit({ type: 'message', conversationId: 'c1', eventId: 13, message: m('b') });
    ws().emit({ type: 'message', conversationId: 'c1', eventId: 14, message: m('c', 'bob', 'hi', '2024-01-01T10:01:00Z') });
    ws().emit({ type: 'message', conversationId: 'c1', eventId: 14, message: m('c', 'bob', 'hi', '2024-01-01T10:01:00Z') });
    expect(ids()).toEqual(['a', 'b', 'c']);
  });

  it('after a reconnect replays what was missed exactly once', async () => {
    const { store, ws, ids, clock } = setup();
    ws().accept();
    store.open('c1');
    await flush();
    ws().emit({ type: 'subscribed', conversationId: 'c1', lastEventId: 0 });
    ws().emit({ type: 'message', conversationId: 'c1', eventId: 1, message: m('m1') });
    ws().drop(1006);
    expect(store.getState().connection.status).toBe('reconnecting');
    clock.advance(500);
    ws().accept();
    expect(store.getState().connection.status).toBe('open');
    expect(ws().framesOfType('subscribe')).toEqual([{ type: 'subscribe', conversationId: 'c1', since: 1 }]);
    ws().emit({ type: 'subscribed', conversationId: 'c1', lastEventId: 3 });
    ws().emit({ type: 'message', conversationId: 'c1', eventId: 1, message: m('m1') });
    ws().emit({ type: 'message', conversationId: 'c1', eventId: 2, message: m('m2') });
    ws().emit({ type: 'message', conversationId: 'c1', eventId: 3, message: m('m3') });
    expect(ids()).toEqual(['m1', 'm2', 'm3']);
  });

  it('on resync refetches by REST and merges', async () => {
    const getConversation = vi
      .fn()
      .mockResolvedValueOnce({ conversationId: 'c1', messages: [m('a')], members: ['alice'], lastEventId: 1 })
      .mockResolvedValueOnce({
        conversationId: 'c1',
        messages: [m('a'), m('b'), m('c')],
        members: ['alice'],
        lastEventId: 900,
      });
    const { store, ws, ids, api, socket } = setup(fakeApi({ getConversation }));
    ws().accept();
    store.open('c1');
    await flush();
    ws().emit({ type: 'subscribed', conversationId: 'c1', lastEventId: 900, resync: true });
    await flush();
    expect(api.getConversation).toHaveBeenCalledTimes(2);
    expect(ids()).toEqual(['a', 'b', 'c']);
    expect(socket.lastEventId('c1')).toBe(900);
  });

  it('refetches once when the live subscription is already past the REST snapshot', async () => {
    const getConversation = vi
      .fn()
      .mockResolvedValueOnce({ conversationId: 'c1', messages: [m('a')], members: ['alice'], lastEventId: 1 })
      .mockResolvedValueOnce({ conversationId: 'c1', messages: [m('a'), m('b'), m('c')], members: ['alice'], lastEventId: 3 });
    const { store, ws, ids, api, socket } = setup(fakeApi({ getConversation }));
    ws().accept();
    socket.subscribe('c1'); // subscribed from the list before opening
    ws().emit({ type: 'subscribed', conversationId: 'c1', lastEventId: 3 }); // live from 3 on
    store.open('c1');
    await flush();
    await flush();
    expect(api.getConversation).toHaveBeenCalledTimes(2);
    expect(ids()).toEqual(['a', 'b', 'c']);
  });

  it('handles message_deleted, member_joined and conversation_expired', async () => {
    const { store, ws, ids, conv, socket } = setup();
    ws().accept();
    store.open('c1');
    await flush();
    ws().emit({ type: 'message', conversationId: 'c1', eventId: 1, message: m('x') });
    ws().emit({ type: 'message_deleted', conversationId: 'c1', eventId: 2, messageId: 'x' });
    expect(ids()).toEqual([]);
    ws().emit({ type: 'member_joined', conversationId: 'c1', eventId: 3, username: 'carol' });
    expect(conv().members).toEqual(['alice', 'bob', 'carol']);
    expect(conv().items.at(-1)).toMatchObject({ kind: 'note', text: 'carol joined' });
    ws().emit({ type: 'conversation_expired', conversationId: 'c1' });
    expect(conv().expired).toBe(true);
    expect(socket.isSubscribed('c1')).toBe(false);
  });

  it('keeps the chat list newest-first, live from conversation_added and messages, with unread counts', async () => {
    const api = fakeApi({
      listConversations: vi.fn(async () => [
        summary('old', '2024-01-01T09:00:00Z'),
        summary('new', '2024-01-01T11:00:00Z'),
      ]),
    });
    const { store, ws, socket } = setup(api);
    await flush();
    const order = () => store.getState().conversations.map((c) => c.conversationId);
    expect(order()).toEqual(['new', 'old']);
    expect(socket.isSubscribed('old')).toBe(true);
    ws().accept();
    ws().emit({ type: 'conversation_added', conversation: summary('fresh', '2024-01-01T12:00:00Z') });
    expect(order()).toEqual(['fresh', 'new', 'old']);
    expect(socket.isSubscribed('fresh')).toBe(true);
    expect(ws().framesOfType('subscribe').map((f) => f.conversationId)).toContain('fresh');
    ws().emit({
      type: 'message',
      conversationId: 'old',
      eventId: 5,
      message: m('z', 'bob', 'ping', '2024-01-01T13:00:00Z'),
    });
    expect(order()).toEqual(['old', 'fresh', 'new']);
    expect(store.getState().convs.old!.unread).toBe(1);
    store.open('old');
    expect(store.getState().convs.old!.unread).toBe(0);
  });

  it('shows typing for others and hides it after 3 seconds', async () => {
    const { store, ws, conv, clock } = setup();
    ws().accept();
    store.open('c1');
    await flush();
    ws().emit({ type: 'typing', conversationId: 'c1', username: 'bob' });
    ws().emit({ type: 'typing', conversationId: 'c1', username: 'alice' }); // me: ignored
    expect(Object.keys(conv().typing)).toEqual(['bob']);
    clock.advance(TYPING_VISIBLE_MS - 100);
    expect(Object.keys(conv().typing)).toEqual(['bob']);
    clock.advance(100);
    expect(Object.keys(conv().typing)).toEqual([]);
    ws().emit({ type: 'typing', conversationId: 'c1', username: 'bob' });
    ws().emit({ type: 'message', conversationId: 'c1', eventId: 1, message: m('q', 'bob') });
    expect(Object.keys(conv().typing)).toEqual([]); // their message ends "typing"
  });

  it('open chats: typing names the role, and our own echoed typing is not shown', async () => {
    const api = fakeApi({ getConversation: vi.fn(async () => ({ conversationId: 'o1', messages: [] })) });
    const { store, ws, conv, clock } = setup(api, null);
    ws().accept();
    store.open('o1');
    await flush();
    store.typing('o1', 'agent');
    expect(ws().framesOfType('typing')).toEqual([{ type: 'typing', conversationId: 'o1', sender: 'agent' }]);
    ws().emit({ type: 'typing', conversationId: 'o1', username: 'agent' }); // our own echo
    expect(conv('o1').typing).toEqual({});
    ws().emit({ type: 'typing', conversationId: 'o1', username: 'customer' }); // the other side
    expect(Object.keys(conv('o1').typing)).toEqual(['customer']);
    clock.advance(TYPING_VISIBLE_MS);
    ws().emit({ type: 'typing', conversationId: 'o1', username: 'agent' }); // a real agent, later
    expect(Object.keys(conv('o1').typing)).toEqual(['agent']);
  });

  it('merges history keeping newer live messages but not stale ones', () => {
    const live = [
      { kind: 'message' as const, message: m('old-gone', 'bob', 'x', '2024-01-01T09:00:00Z') },
      { kind: 'message' as const, message: m('newer', 'bob', 'x', '2024-01-01T12:00:00Z') },
    ];
    const merged = mergeHistory(live, [m('h1', 'bob', 'x', '2024-01-01T10:00:00Z'), m('h2', 'bob', 'x', '2024-01-01T11:00:00Z')]);
    expect(merged.map((i) => (i.kind === 'message' ? i.message.messageId : ''))).toEqual(['h1', 'h2', 'newer']);
  });

  it('marks a missing chat as not found', async () => {
    const api = fakeApi({
      getConversation: vi.fn(async () => {
        throw new ApiError(404, 'not_found', 'Not found');
      }),
    });
    const { store, conv } = setup(api);
    store.open('nope');
    await flush();
    expect(conv('nope').notFound).toBe(true);
  });
});

describe('ChatStore: assistant streaming', () => {
  async function streaming() {
    const t = setup();
    t.ws().accept();
    t.store.open('c1');
    await flush();
    t.ws().emit({ type: 'subscribed', conversationId: 'c1', lastEventId: 0 });
    t.ws().emit({ type: 'assistant_delta', conversationId: 'c1', responseId: 'r1', seq: 0, delta: 'Hello ' });
    t.ws().emit({ type: 'assistant_delta', conversationId: 'c1', responseId: 'r1', seq: 1, delta: 'there' });
    return t;
  }

  it('shows partial text, then replaces the bubble with the stored message (done first)', async () => {
    const { ws, conv, ids } = await streaming();
    expect(conv().responses).toHaveLength(1);
    expect(conv().responses[0]).toMatchObject({ text: 'Hello there', status: 'streaming' });
    ws().emit({ type: 'assistant_done', conversationId: 'c1', responseId: 'r1', messageId: 'am1' });
    expect(conv().responses[0]).toMatchObject({ status: 'done', messageId: 'am1' });
    ws().emit({ type: 'message', conversationId: 'c1', eventId: 1, message: m('am1', 'assistant', 'Hello there') });
    expect(conv().responses).toEqual([]);
    expect(ids()).toEqual(['am1']);
  });

  it('message event before done: one message, no leftover bubble', async () => {
    const { ws, conv, ids } = await streaming();
    ws().emit({ type: 'message', conversationId: 'c1', eventId: 1, message: m('am1', 'assistant', 'Hello there') });
    expect(conv().responses).toEqual([]);
    ws().emit({ type: 'assistant_done', conversationId: 'c1', responseId: 'r1', messageId: 'am1' });
    expect(conv().responses).toEqual([]);
    expect(ids()).toEqual(['am1']);
  });

  it('stop: sends cancel, and a stopped answer is flagged', async () => {
    const { ws, conv, store } = await streaming();
    await store.stop('c1');
    expect(ws().framesOfType('cancel')).toEqual([{ type: 'cancel', conversationId: 'c1' }]);
    ws().emit({ type: 'assistant_done', conversationId: 'c1', responseId: 'r1', messageId: 'am1', stopped: true });
    ws().emit({ type: 'message', conversationId: 'c1', eventId: 1, message: m('am1', 'assistant', 'Hello there') });
    expect(conv().stopped).toEqual({ am1: true });
    expect(conv().responses).toEqual([]);
  });

  it('stop falls back to REST when the socket is down', async () => {
    const { ws, store, api } = await streaming();
    ws().drop();
    await store.stop('c1');
    expect(api.cancelAssistant).toHaveBeenCalledWith('c1');
  });

  it('restarted clears the partial text; error shows the message', async () => {
    const { ws, conv } = await streaming();
    ws().emit({ type: 'assistant_restarted', conversationId: 'c1', responseId: 'r1' });
    expect(conv().responses[0]).toMatchObject({ text: '', status: 'streaming' });
    ws().emit({ type: 'assistant_delta', conversationId: 'c1', responseId: 'r1', seq: 0, delta: 'Again' });
    expect(conv().responses[0]!.text).toBe('Again');
    ws().emit({ type: 'assistant_error', conversationId: 'c1', responseId: 'r1', code: 'upstream', message: 'Model unavailable' });
    expect(conv().responses[0]).toMatchObject({ status: 'error', error: { message: 'Model unavailable' } });
  });

  it('drops a bubble whose answer finished while we were disconnected', async () => {
    const { ws, conv, clock, ids } = await streaming();
    ws().drop();
    clock.advance(500);
    ws().accept();
    ws().emit({ type: 'subscribed', conversationId: 'c1', lastEventId: 1 });
    expect(conv().responses[0]!.stale).toBe(true);
    ws().emit({ type: 'message', conversationId: 'c1', eventId: 1, message: m('am1', 'assistant', 'Hello there, done.') });
    expect(conv().responses).toEqual([]);
    expect(ids()).toEqual(['am1']);
  });
});

describe('ChatStore: sending', () => {
  it('sends over the socket, shows a pending bubble, and replaces it when acked + delivered', async () => {
    const { store, ws, conv, ids } = setup();
    ws().accept();
    store.open('c1');
    await flush();
    const p = store.send('c1', 'hello **world**\n');
    expect(conv().pending).toMatchObject([{ content: 'hello **world**', status: 'sending', sender: 'alice' }]);
    const [frame] = ws().framesOfType('send');
    expect(frame).toMatchObject({ type: 'send', conversationId: 'c1', content: 'hello **world**' });
    ws().emit({ type: 'ack', clientId: frame!.clientId as string, messageId: 'mm' });
    await p;
    expect(conv().pending).toHaveLength(1); // acked, waiting for the event
    ws().emit({ type: 'message', conversationId: 'c1', eventId: 1, message: m('mm', 'alice', 'hello **world**') });
    expect(conv().pending).toEqual([]);
    expect(ids()).toEqual(['mm']);
  });

  it('falls back to REST when offline; open chats carry sender and timestamp', async () => {
    const api = fakeApi({
      getConversation: vi.fn(async () => ({ conversationId: 'o1', messages: [] })),
    });
    const { store, conv } = setup(api, null);
    store.open('o1');
    await flush();
    expect(conv('o1').kind).toBe('open');
    await store.send('o1', 'Hi from support', 'agent');
    expect(api.postMessage).toHaveBeenCalledWith(
      'o1',
      {
        content: 'Hi from support',
        sender: 'agent',
        timestamp: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
      },
      expect.any(String), // the clientId, as the Idempotency-Key
    );
  });

  it('marks a rejected send as failed and can retry it', async () => {
    const postMessage = vi
      .fn()
      .mockRejectedValueOnce(new ApiError(429, 'rate_limited', 'Too many messages'))
      .mockResolvedValueOnce({ messageId: 'ok' });
    const { store, conv } = setup(fakeApi({ postMessage }));
    store.open('c1');
    await flush();
    await store.send('c1', 'hi');
    expect(conv().pending[0]).toMatchObject({ status: 'failed', error: 'Too many messages' });
    const first = conv().pending[0]!;
    store.retry('c1', first.clientId);
    await flush();
    expect(postMessage).toHaveBeenCalledTimes(2);
    expect(conv().pending[0]).toMatchObject({ status: 'sending', messageId: 'ok' });
    // The retry is the same message: same clientId (the Idempotency-Key) and timestamp.
    expect(conv().pending[0]).toMatchObject({ clientId: first.clientId, timestamp: first.timestamp });
    expect(postMessage.mock.calls[1]![2]).toBe(first.clientId);
    expect(postMessage.mock.calls[1]![1]).toEqual(postMessage.mock.calls[0]![1]);
  });
});
