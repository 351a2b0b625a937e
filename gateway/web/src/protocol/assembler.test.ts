import { beforeEach, describe, expect, it } from 'vitest';
import { FakeClock, FakeWebSocket } from '../test/fakes';
import { AssistantAssembler, type AssistantResponse } from './assembler';
import { ConfabSocket } from './client';

const d = (seq: number, delta: string, responseId = 'r1', conversationId = 'c1') => ({
  type: 'assistant_delta' as const,
  conversationId,
  responseId,
  seq,
  delta,
});

describe('AssistantAssembler', () => {
  let a: AssistantAssembler;
  beforeEach(() => {
    a = new AssistantAssembler();
  });

  it('appends in-order deltas', () => {
    a.delta(d(0, 'Hel'));
    a.delta(d(1, 'lo'));
    const r = a.delta(d(2, ' world'));
    expect(r).toMatchObject({ text: 'Hello world', lastSeq: 2, status: 'streaming' });
  });

  it('buffers out-of-order deltas until the gap fills and drops duplicates', () => {
    a.delta(d(0, 'A'));
    expect(a.delta(d(2, 'C'))).toBeNull(); // gap: nothing new to show yet
    expect(a.get('r1')!.text).toBe('A');
    expect(a.delta(d(3, 'D'))).toBeNull();
    expect(a.delta(d(1, 'B'))).toMatchObject({ text: 'ABCD', lastSeq: 3 });
    expect(a.delta(d(1, 'B'))).toBeNull(); // duplicate
    expect(a.delta(d(3, 'D'))).toBeNull(); // duplicate
    expect(a.delta(d(2, 'C'))).toBeNull();
    expect(a.delta(d(4, 'E'))).toMatchObject({ text: 'ABCDE', lastSeq: 4 });
    expect(a.delta(d(5, 'F'))!.text).toBe('ABCDEF');
  });

  it('takes a mid-answer join snapshot and then only higher seqs', () => {
    // Joined mid-answer: one delta with the text so far, seq = last seq it covers.
    expect(a.delta(d(41, 'The answer so far'))).toMatchObject({ text: 'The answer so far', lastSeq: 41 });
    expect(a.delta(d(40, ' so far'))).toBeNull();
    expect(a.delta(d(41, ' far'))).toBeNull();
    expect(a.delta(d(42, ', and more'))!.text).toBe('The answer so far, and more');
  });

  it('replaces the text with the snapshot that follows a re-subscribe', () => {
    a.delta(d(0, 'One '));
    a.delta(d(1, 'two '));
    const [stale] = a.resubscribed('c1');
    expect(stale).toMatchObject({ stale: true, text: 'One two ' });
    expect(a.resubscribed('other')).toEqual([]);
    // While we were away the server produced seqs 2..4; the snapshot covers 0..4.
    expect(a.delta(d(4, 'One two three four five '))).toMatchObject({
      text: 'One two three four five ',
      lastSeq: 4,
      stale: false,
    });
    expect(a.delta(d(4, 'five '))).toBeNull();
    expect(a.delta(d(5, 'six'))!.text).toBe('One two three four five six');
  });

  it('after a re-subscribe, a live delta (no snapshot) is still appended', () => {
    a.delta(d(0, 'One '));
    a.resubscribed('c1');
    expect(a.delta(d(1, 'two'))).toMatchObject({ text: 'One two', stale: false });
  });

  it('assistant_restarted discards the partial text and a new stream follows', () => {
    a.delta(d(0, 'Wrong '));
    a.delta(d(1, 'start'));
    const r = a.restarted({ type: 'assistant_restarted', conversationId: 'c1', responseId: 'r1' });
    expect(r).toMatchObject({ text: '', lastSeq: -1, status: 'streaming', restarts: 1 });
    expect(a.delta(d(0, 'Right '))!.text).toBe('Right ');
    expect(a.delta(d(1, 'answer'))!.text).toBe('Right answer');
  });

  it('finishes on done (stopped), then ignores late deltas', () => {
    a.delta(d(0, 'Partial'));
    a.delta(d(2, 'never')); // buffered behind a gap
    const r = a.done({
      type: 'assistant_done',
      conversationId: 'c1',
      responseId: 'r1',
      messageId: 'm9',
      stopped: true,
    });
    expect(r).toMatchObject({ text: 'Partial', status: 'stopped', messageId: 'm9' });
    expect(a.delta(d(1, ' more'))).toBeNull();
    a.remove('r1');
    expect(a.delta(d(3, 'zombie'))).toBeNull(); // finished responses are remembered
    expect(a.get('r1')).toBeUndefined();
  });

  it('records assistant_error with its message', () => {
    a.delta(d(0, 'Hmm'));
    const r = a.error({
      type: 'assistant_error',
      conversationId: 'c1',
      responseId: 'r1',
      code: 'upstream_error',
      message: 'The model is unavailable',
    });
    expect(r).toMatchObject({ status: 'error', text: 'Hmm', error: { code: 'upstream_error', message: 'The model is unavailable' } });
  });

  it('keeps concurrent responses apart', () => {
    a.delta(d(0, 'a', 'r1'));
    a.delta(d(0, 'x', 'r2', 'c2'));
    a.delta(d(1, 'b', 'r1'));
    expect(a.get('r1')!.text).toBe('ab');
    expect(a.get('r2')!.text).toBe('x');
    expect(a.forConversation('c2').map((r) => r.responseId)).toEqual(['r2']);
    a.clearConversation('c1');
    expect(a.get('r1')).toBeUndefined();
  });

  it('rejects malformed seq values', () => {
    expect(a.delta({ ...d(0, 'x'), seq: -1 })).toBeNull();
    expect(a.delta({ ...d(0, 'x'), seq: 1.5 })).toBeNull();
  });
});

describe('ConfabSocket delta assembly across a reconnect', () => {
  beforeEach(() => FakeWebSocket.reset());

  it('streams, survives a drop mid-answer via the snapshot, and ends with done', () => {
    const clock = new FakeClock();
    const sock = new ConfabSocket({ url: 'ws://t/ws', WebSocketImpl: FakeWebSocket, clock, random: () => 1 });
    const seen: AssistantResponse[] = [];
    sock.on((e) => {
      if (e.kind === 'assistant') seen.push(e.response);
    });
    sock.subscribe('c1', 3);
    sock.connect();
    let ws = FakeWebSocket.last;
    ws.accept();
    ws.emit({ type: 'subscribed', conversationId: 'c1', lastEventId: 3 });
    ws.emit(d(0, 'Tok'));
    ws.emit(d(1, 'en '));
    ws.emit(d(1, 'en ')); // duplicate
    expect(seen.at(-1)!.text).toBe('Token ');
    ws.drop();
    clock.advance(500);
    ws = FakeWebSocket.last;
    ws.accept();
    ws.emit({ type: 'subscribed', conversationId: 'c1', lastEventId: 3 });
    expect(seen.at(-1)).toMatchObject({ stale: true, text: 'Token ' });
    ws.emit(d(3, 'Token by token')); // snapshot of 0..3
    ws.emit(d(4, '!'));
    expect(seen.at(-1)).toMatchObject({ text: 'Token by token!', lastSeq: 4 });
    ws.emit({ type: 'assistant_done', conversationId: 'c1', responseId: 'r1', messageId: 'm1' });
    expect(seen.at(-1)).toMatchObject({ status: 'done', messageId: 'm1', text: 'Token by token!' });
  });
});
