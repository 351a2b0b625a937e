import { beforeEach, describe, expect, it } from 'vitest';
import { FakeClock, FakeWebSocket } from '../test/fakes';
import {
  ConfabSocket,
  NotConnectedError,
  SendFailedError,
  backoffDelay,
  gatewaySocketUrl,
  type SocketEvent,
} from './client';
import { compareEventIds, type ServerFrame } from './types';

function setup(opts: Partial<ConstructorParameters<typeof ConfabSocket>[0]> = {}) {
  const clock = new FakeClock();
  const events: SocketEvent[] = [];
  const sock = new ConfabSocket({
    url: 'ws://test/ws?token=t',
    WebSocketImpl: FakeWebSocket,
    clock,
    random: () => 1, // jitter off: delay = full backoff step
    backoff: { initialMs: 500, maxMs: 8000 },
    ...opts,
  });
  sock.on((e) => events.push(e));
  const frames = () =>
    events.filter((e): e is Extract<SocketEvent, { kind: 'frame' }> => e.kind === 'frame').map((e) => e.frame);
  const messages = () =>
    frames()
      .filter((f): f is Extract<ServerFrame, { type: 'message' }> => f.type === 'message')
      .map((f) => f.message.messageId);
  return { clock, events, sock, frames, messages };
}

const msg = (conversationId: string, eventId: number, messageId: string) => ({
  type: 'message' as const,
  conversationId,
  eventId,
  message: { messageId, sender: 'bob', content: `hi ${messageId}`, timestamp: '2024-01-01T00:00:00Z' },
});

beforeEach(() => FakeWebSocket.reset());

describe('ConfabSocket connection and subscriptions', () => {
  it('subscribes on open with since from REST, then re-subscribes with the last eventId seen after a drop', () => {
    const { clock, sock, messages, events } = setup();
    sock.subscribe('c1', 7); // REST said lastEventId 7
    sock.subscribe('c2'); // never fetched: no since
    sock.connect();
    const ws1 = FakeWebSocket.last;
    expect(ws1.url).toBe('ws://test/ws?token=t');
    ws1.accept();
    expect(ws1.framesOfType('subscribe')).toEqual([
      { type: 'subscribe', conversationId: 'c1', since: 7 },
      { type: 'subscribe', conversationId: 'c2' },
    ]);
    ws1.emit({ type: 'subscribed', conversationId: 'c1', lastEventId: 7 });
    ws1.emit({ type: 'subscribed', conversationId: 'c2', lastEventId: 40 });
    ws1.emit(msg('c1', 8, 'm8'));
    ws1.emit(msg('c1', 9, 'm9'));
    expect(sock.lastEventId('c1')).toBe(9);
    expect(sock.lastEventId('c2')).toBe(40);

    ws1.drop(1006);
    expect(sock.status.status).toBe('reconnecting');
    expect(events.some((e) => e.kind === 'status' && e.info.status === 'reconnecting')).toBe(true);
    // Nothing happens before the backoff delay elapses.
    clock.advance(499);
    expect(FakeWebSocket.instances).toHaveLength(1);
    clock.advance(1);
    expect(FakeWebSocket.instances).toHaveLength(2);
    const ws2 = FakeWebSocket.last;
    ws2.accept();
    expect(sock.status.status).toBe('open');
    expect(ws2.framesOfType('subscribe')).toEqual([
      { type: 'subscribe', conversationId: 'c1', since: 9 },
      { type: 'subscribe', conversationId: 'c2', since: 40 },
    ]);
    // The server replays from since (and a sloppy server may overlap): each shows once.
    ws2.emit({ type: 'subscribed', conversationId: 'c1', lastEventId: 11 });
    ws2.emit(msg('c1', 9, 'm9'));
    ws2.emit(msg('c1', 10, 'm10'));
    ws2.emit(msg('c1', 11, 'm11'));
    ws2.emit(msg('c1', 10, 'm10'));
    expect(messages()).toEqual(['m8', 'm9', 'm10', 'm11']);
    expect(sock.lastEventId('c1')).toBe(11);
  });

  it('backs off exponentially with a cap, and resets after a successful open', () => {
    const { clock, sock } = setup();
    sock.connect();
    const delays: number[] = [];
    for (let i = 0; i < 6; i++) {
      FakeWebSocket.last.drop(1006); // connection refused
      delays.push(clock.pendingDelays().at(-1)!);
      clock.advance(delays.at(-1)!);
    }
    expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 8000]);
    expect(sock.status.attempt).toBe(6);
    FakeWebSocket.last.accept();
    expect(sock.status).toMatchObject({ status: 'open', attempt: 0 });
    FakeWebSocket.last.drop(1001); // server shutting down
    expect(clock.pendingDelays()).toContain(500);
  });

  it('applies jitter within [half, full] of the step', () => {
    const opts = { initialMs: 1000, maxMs: 30000 };
    expect(backoffDelay(0, opts, () => 0)).toBe(500);
    expect(backoffDelay(0, opts, () => 1)).toBe(1000);
    expect(backoffDelay(3, opts, () => 0.5)).toBe(6000);
    expect(backoffDelay(30, opts, () => 1)).toBe(30000);
  });

  it('resumes a slow-consumer close (4008) almost at once with since', () => {
    const { clock, sock } = setup();
    sock.subscribe('c1', 3);
    sock.connect();
    FakeWebSocket.last.accept();
    FakeWebSocket.last.emit(msg('c1', 4, 'm4'));
    FakeWebSocket.last.drop(4008);
    clock.advance(250);
    FakeWebSocket.last.accept();
    expect(FakeWebSocket.last.framesOfType('subscribe')).toEqual([
      { type: 'subscribe', conversationId: 'c1', since: 4 },
    ]);
  });

  it('stops and reports auth_expired on close 4001 (token revoked)', () => {
    const { clock, sock, events } = setup();
    sock.connect();
    FakeWebSocket.last.accept();
    FakeWebSocket.last.drop(4001);
    clock.advance(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(sock.status.status).toBe('closed');
    expect(events.some((e) => e.kind === 'auth_expired')).toBe(true);
  });

  it('on resync:true reports it and continues from the server lastEventId', () => {
    const { sock, events, messages } = setup();
    sock.subscribe('c1', 2);
    sock.connect();
    FakeWebSocket.last.accept();
    FakeWebSocket.last.emit({ type: 'subscribed', conversationId: 'c1', lastEventId: 500, resync: true });
    expect(events).toContainEqual({ kind: 'resync', conversationId: 'c1' });
    expect(sock.lastEventId('c1')).toBe(500);
    FakeWebSocket.last.emit(msg('c1', 499, 'old'));
    FakeWebSocket.last.emit(msg('c1', 501, 'new'));
    expect(messages()).toEqual(['new']);
  });

  it('asks for a resync when it subscribed without since and REST then reported an older position', () => {
    const { sock, events } = setup();
    sock.connect();
    FakeWebSocket.last.accept();
    sock.subscribe('c1'); // e.g. from the chat list: no since
    expect(FakeWebSocket.last.framesOfType('subscribe')).toEqual([{ type: 'subscribe', conversationId: 'c1' }]);
    sock.setLastEventId('c1', 5); // REST snapshot covered up to 5 …
    FakeWebSocket.last.emit({ type: 'subscribed', conversationId: 'c1', lastEventId: 8 }); // … live starts after 8
    expect(events).toContainEqual({ kind: 'resync', conversationId: 'c1' });
    expect(sock.lastEventId('c1')).toBe(8);
    // No gap => no resync.
    sock.subscribe('c2');
    sock.setLastEventId('c2', 9);
    FakeWebSocket.last.emit({ type: 'subscribed', conversationId: 'c2', lastEventId: 9 });
    expect(events).not.toContainEqual({ kind: 'resync', conversationId: 'c2' });
  });

  it('drops events for conversations it is not subscribed to, and unsubscribes', () => {
    const { sock, messages } = setup();
    sock.subscribe('c1');
    sock.connect();
    FakeWebSocket.last.accept();
    FakeWebSocket.last.emit(msg('zzz', 1, 'stray'));
    sock.unsubscribe('c1');
    expect(FakeWebSocket.last.framesOfType('unsubscribe')).toEqual([{ type: 'unsubscribe', conversationId: 'c1' }]);
    FakeWebSocket.last.emit(msg('c1', 1, 'late'));
    expect(messages()).toEqual([]);
  });

  it('queues subscriptions made while offline and sends them on open', () => {
    const { sock } = setup();
    sock.connect();
    sock.subscribe('later', 5);
    expect(FakeWebSocket.last.sent).toEqual([]);
    FakeWebSocket.last.accept();
    expect(FakeWebSocket.last.framesOfType('subscribe')).toEqual([
      { type: 'subscribe', conversationId: 'later', since: 5 },
    ]);
    sock.subscribe('now');
    expect(FakeWebSocket.last.framesOfType('subscribe').at(-1)).toEqual({ type: 'subscribe', conversationId: 'now' });
  });

  it('never lowers the high-water mark when REST reports an older lastEventId', () => {
    const { sock } = setup();
    sock.subscribe('c1', 10);
    sock.setLastEventId('c1', 4);
    expect(sock.lastEventId('c1')).toBe(10);
    sock.subscribe('c1', 12);
    expect(sock.lastEventId('c1')).toBe(12);
  });

  it('orders numeric and stream-style event ids', () => {
    expect(compareEventIds(9, 10)).toBeLessThan(0);
    expect(compareEventIds('1700-2', '1700-10')).toBeLessThan(0);
    expect(compareEventIds('1701-0', '1700-99')).toBeGreaterThan(0);
    expect(compareEventIds(5, '5')).toBe(0);
  });
});

describe('ConfabSocket keepalive, typing, send/ack', () => {
  it('pings while open and reconnects when the link goes silent', () => {
    const { clock, sock } = setup({ pingIntervalMs: 20_000, idleTimeoutMs: 50_000 });
    sock.subscribe('c1', 1);
    sock.connect();
    const ws = FakeWebSocket.last;
    ws.accept();
    clock.advance(20_000);
    expect(ws.framesOfType('ping')).toHaveLength(1);
    ws.emit({ type: 'pong' });
    clock.advance(20_000);
    expect(ws.framesOfType('ping')).toHaveLength(2);
    // no pong / no frames from now on
    clock.advance(40_000);
    expect(ws.closedByClient).toBe(true);
    expect(sock.status.status).toBe('reconnecting');
    clock.advance(500);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it('gives up on a connection attempt that never opens', () => {
    const { clock, sock } = setup({ connectTimeoutMs: 5_000 });
    sock.connect();
    clock.advance(4_999);
    expect(FakeWebSocket.last.closedByClient).toBe(false);
    clock.advance(1);
    expect(FakeWebSocket.instances[0]!.closedByClient).toBe(true);
    expect(sock.status.status).toBe('reconnecting');
    clock.advance(500);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it('throttles typing frames to one per 2 seconds per conversation', () => {
    const { clock, sock } = setup();
    sock.connect();
    const ws = FakeWebSocket.last;
    ws.accept();
    expect(sock.typing('c1')).toBe(true);
    clock.advance(500);
    expect(sock.typing('c1')).toBe(false);
    expect(sock.typing('c2')).toBe(true);
    clock.advance(1_499);
    expect(sock.typing('c1')).toBe(false);
    clock.advance(1);
    expect(sock.typing('c1')).toBe(true);
    expect(ws.framesOfType('typing')).toEqual([
      { type: 'typing', conversationId: 'c1' },
      { type: 'typing', conversationId: 'c2' },
      { type: 'typing', conversationId: 'c1' },
    ]);
  });

  it('resolves sendMessage on ack, rejects on an error naming the clientId, and when offline', async () => {
    let n = 0;
    const { sock } = setup({ newClientId: () => `cid${++n}` });
    await expect(sock.sendMessage({ conversationId: 'c1', content: 'x' })).rejects.toBeInstanceOf(NotConnectedError);
    sock.connect();
    const ws = FakeWebSocket.last;
    ws.accept();
    const p1 = sock.sendMessage({ conversationId: 'c1', content: 'hello' });
    const p2 = sock.sendMessage({
      conversationId: 'open1',
      content: 'hi',
      sender: 'agent',
      timestamp: '2024-05-01T10:00:00.000Z',
    });
    expect(ws.framesOfType('send')).toEqual([
      { type: 'send', conversationId: 'c1', content: 'hello', clientId: 'cid1' },
      {
        type: 'send',
        conversationId: 'open1',
        content: 'hi',
        clientId: 'cid2',
        sender: 'agent',
        timestamp: '2024-05-01T10:00:00.000Z',
      },
    ]);
    ws.emit({ type: 'ack', clientId: 'cid1', messageId: 'm-1' });
    ws.emit({ type: 'error', code: 'rate_limited', message: 'Slow down', ref: 'cid2' });
    await expect(p1).resolves.toBe('m-1');
    await expect(p2).rejects.toEqual(new SendFailedError('Slow down', 'rate_limited'));
  });

  it('rejects in-flight sends when the connection drops', async () => {
    const { sock } = setup();
    sock.connect();
    FakeWebSocket.last.accept();
    const p = sock.sendMessage({ conversationId: 'c1', content: 'x' });
    FakeWebSocket.last.drop();
    await expect(p).rejects.toBeInstanceOf(NotConnectedError);
  });

  it('sends cancel frames and does nothing after close()', () => {
    const { clock, sock } = setup();
    sock.connect();
    FakeWebSocket.last.accept();
    expect(sock.cancel('c1')).toBe(true);
    expect(FakeWebSocket.last.framesOfType('cancel')).toEqual([{ type: 'cancel', conversationId: 'c1' }]);
    sock.close();
    expect(sock.status.status).toBe('closed');
    expect(sock.cancel('c1')).toBe(false);
    clock.advance(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it('ignores malformed and unknown frames', () => {
    const { sock, frames } = setup();
    sock.connect();
    const ws = FakeWebSocket.last;
    ws.accept();
    ws.onmessage?.({ data: 'not json' });
    ws.onmessage?.({ data: JSON.stringify({ type: 'mystery' }) });
    ws.onmessage?.({ data: JSON.stringify([1, 2]) });
    expect(frames()).toEqual([]);
  });

  it('builds the socket URL from the page origin', () => {
    const loc = { protocol: 'https:', host: 'chat.example:8443' } as Location;
    expect(gatewaySocketUrl('a b', loc)).toBe('wss://chat.example:8443/ws?token=a%20b');
    expect(gatewaySocketUrl(null, { protocol: 'http:', host: 'h' } as Location)).toBe('ws://h/ws');
  });
});
