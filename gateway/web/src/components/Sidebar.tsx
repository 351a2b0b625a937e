import { conversationTitle, type ChatStore } from '../state/store';
import { useStore } from '../state/useStore';
import type { StatusInfo } from '../protocol/client';
import { formatRelative, hueFor, initials, plainPreview } from '../lib/format';
import { chatPath, navigate } from '../lib/router';
import { ConnectionStatus } from './ConnectionStatus';

export function Sidebar({
  store,
  me,
  activeId,
  connection,
  onNewChat,
  onSignOut,
  onRetry,
}: {
  store: ChatStore;
  me: string;
  activeId: string | null;
  connection: StatusInfo;
  onNewChat: () => void;
  onSignOut: () => void;
  onRetry: () => void;
}) {
  const conversations = useStore(store, (s) => s.conversations);
  const convs = useStore(store, (s) => s.convs);
  const listLoaded = useStore(store, (s) => s.listLoaded);
  const listError = useStore(store, (s) => s.listError);

  return (
    <aside className="sidebar" aria-label="Chats">
      <div className="sidebar-head">
        <div className="brand">
          <span className="logo" aria-hidden="true">
            ◆
          </span>
          Confab
        </div>
        <ConnectionStatus info={connection} onRetry={onRetry} />
      </div>
      <div className="sidebar-actions">
        <button type="button" className="btn primary wide" onClick={onNewChat}>
          + New chat
        </button>
      </div>
      <nav className="chat-list" aria-label="Conversations">
        {!listLoaded && <p className="muted pad">Loading chats…</p>}
        {listError && (
          <p className="form-error pad" role="alert">
            {listError}{' '}
            <button type="button" className="link-btn" onClick={() => void store.loadList()}>
              Retry
            </button>
          </p>
        )}
        {listLoaded && !conversations.length && !listError && (
          <p className="muted pad">No chats yet. Start one with “New chat”.</p>
        )}
        <ul>
          {conversations.map((c) => {
            const st = convs[c.conversationId];
            const title = conversationTitle(c, me);
            const unread = st?.unread ?? 0;
            const expired = st?.expired ?? false;
            const last = st?.items.at(-1);
            const preview =
              last?.kind === 'message'
                ? `${last.message.sender === me ? 'You' : last.message.sender === 'assistant' ? 'Assistant' : last.message.sender}: ${plainPreview(last.message.content)}`
                : c.members.filter((m) => m !== me).join(', ') || 'Only you';
            const active = c.conversationId === activeId;
            return (
              <li key={c.conversationId}>
                <a
                  href={chatPath(c.conversationId)}
                  className={`chat-item${active ? ' active' : ''}${expired ? ' expired' : ''}`}
                  aria-current={active ? 'page' : undefined}
                  onClick={(e) => {
                    if (e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
                    e.preventDefault();
                    navigate(chatPath(c.conversationId));
                  }}
                >
                  <span className="avatar" aria-hidden="true" style={{ '--hue': hueFor(title) } as React.CSSProperties}>
                    {initials(title)}
                  </span>
                  <span className="chat-item-text">
                    <span className="chat-item-top">
                      <span className="chat-item-title">{title}</span>
                      <time dateTime={c.lastActivity} className="muted small">
                        {formatRelative(c.lastActivity)}
                      </time>
                    </span>
                    <span className="chat-item-bottom">
                      <span className="chat-item-preview muted small">{expired ? 'Expired' : preview}</span>
                      {unread > 0 && (
                        <span className="unread" aria-label={`${unread} unread`}>
                          {unread}
                        </span>
                      )}
                    </span>
                  </span>
                </a>
              </li>
            );
          })}
        </ul>
      </nav>
      <div className="sidebar-foot">
        <span className="avatar sm" aria-hidden="true" style={{ '--hue': hueFor(me) } as React.CSSProperties}>
          {initials(me)}
        </span>
        <span className="me" title={me}>
          Signed in as <strong>{me}</strong>
        </span>
        <button type="button" className="btn ghost small" onClick={onSignOut}>
          Sign out
        </button>
      </div>
    </aside>
  );
}
