import { render, screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { describe, expect, it, vi } from 'vitest';
import { Composer } from './Composer';

describe('Composer', () => {
  it('Enter sends, Shift+Enter inserts a newline, typing is reported', async () => {
    const user = userEvent.setup();
    const onSend = vi.fn();
    const onTyping = vi.fn();
    render(<Composer onSend={onSend} onTyping={onTyping} onStop={vi.fn()} streaming={false} />);
    const box = screen.getByRole('textbox', { name: 'Message' });
    await user.type(box, 'line one{Shift>}{Enter}{/Shift}line two');
    expect(box).toHaveValue('line one\nline two');
    expect(onTyping).toHaveBeenCalled();
    await user.keyboard('{Enter}');
    expect(onSend).toHaveBeenCalledWith('line one\nline two', undefined);
    expect(box).toHaveValue('');
    await user.keyboard('{Enter}'); // empty: nothing sent
    expect(onSend).toHaveBeenCalledTimes(1);
  });

  it('shows Stop only while the assistant streams', async () => {
    const user = userEvent.setup();
    const onStop = vi.fn();
    const { rerender } = render(<Composer onSend={vi.fn()} onTyping={vi.fn()} onStop={onStop} streaming={false} />);
    expect(screen.queryByRole('button', { name: 'Stop' })).toBeNull();
    rerender(<Composer onSend={vi.fn()} onTyping={vi.fn()} onStop={onStop} streaming />);
    await user.click(screen.getByRole('button', { name: 'Stop' }));
    expect(onStop).toHaveBeenCalledTimes(1);
  });

  it('open chats choose who speaks', async () => {
    const user = userEvent.setup();
    const onSend = vi.fn();
    render(<Composer onSend={onSend} onTyping={vi.fn()} onStop={vi.fn()} streaming={false} openChat />);
    await user.click(screen.getByRole('radio', { name: 'Agent' }));
    await user.type(screen.getByRole('textbox', { name: 'Message' }), 'How can I help?');
    await user.click(screen.getByRole('button', { name: 'Send' }));
    expect(onSend).toHaveBeenCalledWith('How can I help?', 'agent');
  });
});
