import { useEffect, useState } from 'react';
import type { Api } from '../protocol/api';
import { conversationTitle, emptyConversation, type ChatStore } from '../state/store';
import { useStore } from '../state/useStore';
import { hueFor, initials } from '../lib/format';
import { Composer } from './Composer';
import { InviteDialog } from './InviteDialog';
import { MessageList } from './MessageList';

function typingText(names: string[]): string {
  const label = (n: string) =>
    n === 'assistant' ? 'Assistant' : n === 'customer' ? 'Customer' : n === 'agent' ? 'Agent' : n === 'guest' ? 'Someone' : n;
  if (names.length === 0) return '';
  if (names.length === 1) return `${label(names[0]!)} is typing…`;
  if (names.length === 2) return `${label(names[0]!)} and ${label(names[1]!)} are typing…`;
  return `${names.length} people are typing…`;
}

export function ChatView({
  store,
  api,
  id,
  me,
  onBack,
  backLabel = 'Back to chats',
}: {
  store: ChatStore;
  api: Api;
  id: string;
  me: string | null;
  onBack?: () => void;
  backLabel?: string;
}) {
  const conv = useStore(store, (s) => s.convs[id]) ?? emptyConversation(id);
  const [inviting, setInviting] = useState(false);
  const [showMembers, setShowMembers] = useState(
    () => typeof window !== 'undefined' && window.matchMedia?.('(min-width: 1100px)').matches === true,
  );
  const openChat = conv.kind === 'open';
  const title = openChat ? 'Open conversation' : conversationTitle({ ...conv, id }, me);
  const streaming = conv.responses.some((r) => r.status === 'streaming');
  const typingNames = Object.keys(conv.typing).filter((u) => u !== me);

  // Narrow screens show members as an overlay: close it when the window gets narrow.
  useEffect(() => {
    const mq = window.matchMedia?.('(max-width: 760px)');
    if (!mq) return;
    const onChange = () => mq.matches && setShowMembers(false);
    mq.addEventListener?.('change', onChange);
    return () => mq.removeEventListener?.('change', onChange);
  }, []);

  useEffect(() => {
    document.title = `${title} · Confab`;
    return () => {
      document.title = 'Confab';
    };
  }, [title]);

  if (conv.notFound) {
    return (
      <section className="chat" aria-label="Conversation">
        <header className="chat-head">
          {onBack && (
            <button type="button" className="icon-btn back" aria-label={backLabel} onClick={onBack}>
              ←
            </button>
          )}
          <h1>Not found</h1>
        </header>
        <div className="center-note">
          <p>This conversation doesn’t exist, has expired, or you’re not a member.</p>
        </div>
      </section>
    );
  }

  return (
    <section className="chat" aria-label={`Conversation: ${title}`}>
      <header className="chat-head">
        {onBack && (
          <button type="button" className="icon-btn back" aria-label={backLabel} onClick={onBack}>
            ←
          </button>
        )}
        <div className="chat-title">
          <h1>{title}</h1>
          <p className="muted small">
            {openChat ? (
              <>
                id <code>{id}</code>
              </>
            ) : conv.members.length ? (
              `${conv.members.length} member${conv.members.length === 1 ? '' : 's'}${conv.assistant ? ' · assistant on' : ''}`
            ) : (
              ' '
            )}
          </p>
        </div>
        {!openChat && conv.kind === 'member' && (
          <div className="chat-actions">
            <button
              type="button"
              className="btn ghost"
              aria-expanded={showMembers}
              aria-controls={`members-${id}`}
              onClick={() => setShowMembers((v) => !v)}
            >
              Members
            </button>
            <button
              type="button"
              className="btn ghost"
              onClick={() => setInviting(true)}
              disabled={conv.expired}
            >
              Invite
            </button>
          </div>
        )}
      </header>
      {conv.expired && (
        <div className="banner warn" role="status">
          This chat has expired. Its messages are no longer kept and no new messages can be sent.
        </div>
      )}
      {conv.loadError && (
        <div className="banner danger" role="alert">
          Couldn’t load messages: {conv.loadError}{' '}
          <button type="button" className="link-btn" onClick={() => void store.load(id)}>
            Try again
          </button>
        </div>
      )}
      <div className="chat-body">
        <div className="chat-main">
          {!conv.loaded && conv.loading && (
            <p className="loading muted" role="status">
              Loading messages…
            </p>
          )}
          <MessageList
            conv={conv}
            me={me}
            onRetry={(cid) => store.retry(id, cid)}
            onDismiss={(cid) => store.dismiss(id, cid)}
          />
          <div className="typing" aria-live="polite">
            {typingText(typingNames)}
          </div>
          <Composer
            streaming={streaming}
            openChat={openChat}
            disabled={conv.expired}
            disabledReason="This chat has expired"
            placeholder={openChat ? 'Write a message…' : `Message ${title}`}
            onSend={(text, sender) => void store.send(id, text, sender)}
            onTyping={(sender) => store.typing(id, sender)}
            onStop={() => void store.stop(id)}
          />
        </div>
        {showMembers && !openChat && conv.kind === 'member' && (
          <aside className="members" id={`members-${id}`} aria-label="Members">
            <h2>Members</h2>
            <ul>
              {conv.members.map((m) => (
                <li key={m}>
                  <span className="avatar sm" aria-hidden="true" style={{ '--hue': hueFor(m) } as React.CSSProperties}>
                    {initials(m)}
                  </span>
                  <span>{m}</span>
                  {m === me && <span className="muted small">(you)</span>}
                </li>
              ))}
              {conv.assistant && (
                <li>
                  <span className="avatar sm assistant" aria-hidden="true">
                    ✦
                  </span>
                  <span>Assistant</span>
                </li>
              )}
            </ul>
          </aside>
        )}
      </div>
      {inviting && (
        <InviteDialog
          api={api}
          members={conv.members}
          onClose={() => setInviting(false)}
          onInvite={(u) => store.invite(id, u)}
        />
      )}
    </section>
  );
}
