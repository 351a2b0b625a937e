import { act, render, screen, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import type { Api } from '../protocol/api';
import { ConfabSocket } from '../protocol/client';
import { ChatStore } from '../state/store';
import { FakeClock, FakeWebSocket } from '../test/fakes';
import { ChatView } from './ChatView';

beforeEach(() => FakeWebSocket.reset());

async function mount() {
  const api = {
    getConversation: vi.fn(async () => ({
      conversationId: 'c1',
      title: 'Team',
      members: ['alice', 'bob'],
      assistant: true,
      lastEventId: 4,
      messages: [{ messageId: 'm1', sender: 'bob', content: 'Earlier **hello**', timestamp: '2024-01-01T10:00:00Z' }],
    })),
    listConversations: vi.fn(async () => []),
  };
  const clock = new FakeClock();
  const socket = new ConfabSocket({ url: 'ws://t/ws', WebSocketImpl: FakeWebSocket, clock, random: () => 1 });
  const store = new ChatStore({ api: api as unknown as Api, socket, me: 'alice', clock });
  store.start();
  const ws = FakeWebSocket.last;
  act(() => ws.accept());
  render(<ChatView store={store} api={api as unknown as Api} id="c1" me="alice" />);
  await act(async () => {
    store.open('c1');
  });
  await screen.findByText('hello');
  const emit = (f: Record<string, unknown>) => act(() => ws.emit(f));
  return { ws, emit, store, clock };
}

describe('ChatView (store + socket + UI)', () => {
  it('renders history in an aria-live log, then streams, stops and replaces the assistant bubble', async () => {
    const user = userEvent.setup();
    const { ws, emit } = await mount();
    const log = screen.getByRole('log', { name: 'Messages' });
    expect(log).toHaveAttribute('aria-live', 'polite');
    expect(screen.getByRole('heading', { level: 1, name: 'Team' })).toBeInTheDocument();
    expect(ws.framesOfType('subscribe')).toEqual([{ type: 'subscribe', conversationId: 'c1', since: 4 }]);

    emit({ type: 'assistant_delta', conversationId: 'c1', responseId: 'r1', seq: 0, delta: 'Partial ' });
    emit({ type: 'assistant_delta', conversationId: 'c1', responseId: 'r1', seq: 1, delta: '**answer**' });
    const bubble = log.querySelector('[data-response-id="r1"]') as HTMLElement;
    expect(bubble).toHaveAttribute('data-status', 'streaming');
    expect(within(bubble).getByText('answer').tagName).toBe('STRONG');

    await user.click(screen.getByRole('button', { name: 'Stop' }));
    expect(ws.framesOfType('cancel')).toEqual([{ type: 'cancel', conversationId: 'c1' }]);
    emit({ type: 'assistant_done', conversationId: 'c1', responseId: 'r1', messageId: 'a1', stopped: true });
    expect(screen.queryByRole('button', { name: 'Stop' })).toBeNull();
    emit({
      type: 'message',
      conversationId: 'c1',
      eventId: 5,
      message: { messageId: 'a1', sender: 'assistant', content: 'Partial **answer**', timestamp: '2024-01-01T10:01:00Z' },
    });
    expect(log.querySelector('[data-response-id]')).toBeNull();
    const stored = log.querySelector('[data-message-id="a1"]') as HTMLElement;
    expect(stored).toHaveClass('assistant');
    expect(within(stored).getByText('Stopped')).toBeInTheDocument();
    expect(log.querySelectorAll('[data-message-id="a1"]')).toHaveLength(1);
  });

  it('shows an assistant error and who is typing', async () => {
    const { emit, clock } = await mount();
    emit({ type: 'typing', conversationId: 'c1', username: 'bob' });
    expect(screen.getByText('bob is typing…')).toBeInTheDocument();
    act(() => clock.advance(3000));
    expect(screen.queryByText('bob is typing…')).toBeNull();
    emit({ type: 'assistant_error', conversationId: 'c1', responseId: 'r9', code: 'upstream', message: 'Model unavailable' });
    expect(screen.getByRole('alert')).toHaveTextContent('Model unavailable');
  });

  it('sends with Enter over the socket and says when the chat expired', async () => {
    const user = userEvent.setup();
    const { ws, emit } = await mount();
    await user.type(screen.getByRole('textbox', { name: 'Message' }), 'Hi team{Enter}');
    expect(ws.framesOfType('send')).toMatchObject([{ type: 'send', conversationId: 'c1', content: 'Hi team' }]);
    expect(screen.getByText('Sending…')).toBeInTheDocument();
    emit({ type: 'conversation_expired', conversationId: 'c1' });
    expect(screen.getByText(/This chat has expired/)).toBeInTheDocument();
    expect(screen.getByRole('textbox', { name: 'Message' })).toBeDisabled();
  });
});
