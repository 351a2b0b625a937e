import { render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { useState } from 'react';
import { describe, expect, it, vi } from 'vitest';
import type { Api } from '../protocol/api';
import { NewChatDialog } from './NewChatDialog';

function Harness({ onCreate }: { onCreate: (t: string, m: string[], a: boolean) => Promise<void> }) {
  const [open, setOpen] = useState(false);
  const api = { searchUsers: async (p: string) => ['bob', 'bobcat', 'alice'].filter((u) => u.startsWith(p)) };
  return (
    <>
      <button onClick={() => setOpen(true)}>New chat</button>
      {open && <NewChatDialog api={api as unknown as Api} me="alice" onClose={() => setOpen(false)} onCreate={onCreate} />}
    </>
  );
}

describe('NewChatDialog', () => {
  it('is a labelled modal that traps focus, closes on Escape and restores focus', async () => {
    const user = userEvent.setup();
    render(<Harness onCreate={vi.fn()} />);
    const opener = screen.getByRole('button', { name: 'New chat' });
    await user.click(opener);
    const dialog = screen.getByRole('dialog', { name: 'New chat' });
    expect(dialog).toHaveAttribute('aria-modal', 'true');
    expect(screen.getByLabelText('Title')).toHaveFocus();
    // Tab around: focus never leaves the dialog.
    for (let i = 0; i < 12; i++) {
      await user.tab();
      expect(dialog.contains(document.activeElement)).toBe(true);
    }
    await user.tab({ shift: true });
    expect(dialog.contains(document.activeElement)).toBe(true);
    await user.keyboard('{Escape}');
    expect(screen.queryByRole('dialog')).toBeNull();
    expect(opener).toHaveFocus();
  });

  it('picks invitees from suggestions as removable chips and creates the chat', async () => {
    const user = userEvent.setup();
    const onCreate = vi.fn(async () => {});
    render(<Harness onCreate={onCreate} />);
    await user.click(screen.getByRole('button', { name: 'New chat' }));
    await user.type(screen.getByLabelText('Title'), 'Launch');
    const combo = screen.getByRole('combobox', { name: 'Invite people' });
    await user.type(combo, 'bo');
    await user.click(await screen.findByRole('option', { name: /bobcat/ }));
    await user.type(combo, 'b');
    await screen.findAllByRole('option');
    // bobcat is already chosen, so only bob is offered; Escape closes the list but not the dialog.
    expect(screen.getAllByRole('option').map((o) => o.textContent?.slice(1))).toEqual(['bob']);
    await user.keyboard('{Escape}');
    expect(screen.getByRole('dialog')).toBeInTheDocument();
    await user.keyboard('{ArrowDown}{Enter}');
    const chips = screen.getByRole('list', { name: 'Invited' });
    expect(chips).toHaveTextContent('bobcat');
    expect(chips).toHaveTextContent('bob');
    await user.click(screen.getByRole('button', { name: 'Remove bobcat' }));
    expect(chips).not.toHaveTextContent('bobcat');
    await user.click(screen.getByRole('button', { name: 'Create' }));
    await waitFor(() => expect(onCreate).toHaveBeenCalledWith('Launch', ['bob'], true));
  });
});
