import { useState } from 'react';
import type { Api } from '../protocol/api';
import { errorText } from '../state/store';
import { Chips } from './Chips';
import { Modal } from './Modal';
import { UserCombobox } from './UserCombobox';

export function NewChatDialog({
  api,
  me,
  onClose,
  onCreate,
}: {
  api: Api;
  me: string;
  onClose: () => void;
  onCreate: (title: string, members: string[], assistant: boolean) => Promise<void>;
}) {
  const [title, setTitle] = useState('');
  const [invitees, setInvitees] = useState<string[]>([]);
  const [assistant, setAssistant] = useState(true);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  async function submit(e: React.FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await onCreate(title, invitees, assistant);
    } catch (err) {
      setError(errorText(err));
      setBusy(false);
    }
  }

  return (
    <Modal title="New chat" onClose={onClose} initialFocus="#new-chat-title">
      <form className="stack" onSubmit={submit}>
        <div className="field">
          <label htmlFor="new-chat-title">Title</label>
          <input
            id="new-chat-title"
            type="text"
            value={title}
            maxLength={200}
            placeholder="Optional, e.g. Launch plan"
            onChange={(e) => setTitle(e.target.value)}
          />
        </div>
        <UserCombobox
          label="Invite people"
          search={(p, signal) => api.searchUsers(p, signal)}
          exclude={[me, ...invitees]}
          onSelect={(u) => setInvitees((xs) => (xs.includes(u) ? xs : [...xs, u]))}
        />
        <Chips items={invitees} label="Invited" onRemove={(u) => setInvitees((xs) => xs.filter((x) => x !== u))} />
        <label className="check">
          <input type="checkbox" checked={assistant} onChange={(e) => setAssistant(e.target.checked)} />
          Include the assistant
        </label>
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
            {busy ? 'Creating…' : 'Create'}
          </button>
        </div>
      </form>
    </Modal>
  );
}
