import { useState } from 'react';
import type { Api } from '../protocol/api';
import { errorText } from '../state/store';
import { Chips } from './Chips';
import { Modal } from './Modal';
import { UserCombobox } from './UserCombobox';

export function InviteDialog({
  api,
  members,
  onClose,
  onInvite,
}: {
  api: Api;
  members: readonly string[];
  onClose: () => void;
  onInvite: (username: string) => Promise<void>;
}) {
  const [invitees, setInvitees] = useState<string[]>([]);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  async function submit(e: React.FormEvent) {
    e.preventDefault();
    if (!invitees.length) {
      setError('Pick at least one person to invite.');
      return;
    }
    setBusy(true);
    setError(null);
    const left: string[] = [];
    const problems: string[] = [];
    for (const u of invitees) {
      try {
        await onInvite(u);
      } catch (err) {
        left.push(u);
        problems.push(`${u}: ${errorText(err)}`);
      }
    }
    setBusy(false);
    if (left.length) {
      setInvitees(left);
      setError(problems.join(' '));
    } else {
      onClose();
    }
  }

  return (
    <Modal title="Invite people" onClose={onClose} initialFocus="input[role=combobox]">
      <form className="stack" onSubmit={submit}>
        <UserCombobox
          label="Invite people"
          search={(p, signal) => api.searchUsers(p, signal)}
          exclude={[...members, ...invitees]}
          onSelect={(u) => setInvitees((xs) => (xs.includes(u) ? xs : [...xs, u]))}
        />
        <Chips items={invitees} label="To invite" onRemove={(u) => setInvitees((xs) => xs.filter((x) => x !== u))} />
        {error && (
          <p className="form-error" role="alert">
            {error}
          </p>
        )}
        <div className="row end">
          <button type="button" className="btn ghost" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" className="btn primary" disabled={busy}>
            {busy ? 'Inviting…' : 'Invite'}
          </button>
        </div>
      </form>
    </Modal>
  );
}
