import { render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { describe, expect, it, vi } from 'vitest';
import { UserCombobox } from './UserCombobox';

function setup(users = ['bob', 'bobby', 'bonnie']) {
  const search = vi.fn(async (prefix: string) => users.filter((u) => u.startsWith(prefix)));
  const onSelect = vi.fn();
  render(<UserCombobox label="Invite people" search={search} exclude={['bonnie']} onSelect={onSelect} />);
  return { search, onSelect, input: screen.getByRole('combobox', { name: 'Invite people' }) };
}

describe('UserCombobox', () => {
  it('debounces lookups and exposes an ARIA listbox of options', async () => {
    const user = userEvent.setup();
    const { search, input } = setup();
    expect(input).toHaveAttribute('aria-expanded', 'false');
    const listId = input.getAttribute('aria-controls')!;
    expect(document.getElementById(listId)).toHaveAttribute('role', 'listbox');
    await user.type(input, 'bo');
    await waitFor(() => expect(input).toHaveAttribute('aria-expanded', 'true'));
    // One request for the final prefix, not one per keystroke.
    expect(search).toHaveBeenCalledTimes(1);
    expect(search.mock.calls[0]![0]).toBe('bo');
    const options = screen.getAllByRole('option');
    expect(options.map((o) => o.textContent)).toEqual(['Bbob', 'Bbobby']); // "bonnie" is excluded
    expect(options[0]).toHaveAttribute('aria-selected', 'true');
    expect(input).toHaveAttribute('aria-activedescendant', options[0]!.id);
  });

  it('moves with arrow keys and picks with Enter', async () => {
    const user = userEvent.setup();
    const { onSelect, input } = setup();
    await user.type(input, 'bo');
    await screen.findAllByRole('option');
    await user.keyboard('{ArrowDown}');
    expect(screen.getAllByRole('option')[1]).toHaveAttribute('aria-selected', 'true');
    await user.keyboard('{ArrowDown}'); // wraps
    expect(screen.getAllByRole('option')[0]).toHaveAttribute('aria-selected', 'true');
    await user.keyboard('{ArrowUp}');
    expect(screen.getAllByRole('option')[1]).toHaveAttribute('aria-selected', 'true');
    await user.keyboard('{Enter}');
    expect(onSelect).toHaveBeenCalledWith('bobby');
    expect(input).toHaveValue('');
    expect(input).toHaveAttribute('aria-expanded', 'false');
  });

  it('picks with a click and closes with Escape', async () => {
    const user = userEvent.setup();
    const { onSelect, input } = setup();
    await user.type(input, 'bob');
    await screen.findAllByRole('option');
    await user.keyboard('{Escape}');
    expect(input).toHaveAttribute('aria-expanded', 'false');
    await user.keyboard('{ArrowDown}');
    expect(input).toHaveAttribute('aria-expanded', 'true');
    await user.click(screen.getByRole('option', { name: /bobby/ }));
    expect(onSelect).toHaveBeenCalledTimes(1);
    expect(onSelect).toHaveBeenCalledWith('bobby');
  });

  it('says when nobody matches', async () => {
    const user = userEvent.setup();
    const { input } = setup();
    await user.type(input, 'zed');
    expect(await screen.findByText('No users starting with “zed”')).toBeInTheDocument();
    expect(input).toHaveAttribute('aria-expanded', 'false');
  });
});
