import { useEffect, useMemo, useState } from 'react';
import { Api, type Session } from '../protocol/api';
import { ConfabSocket, gatewaySocketUrl } from '../protocol/client';
import { ChatStore } from '../state/store';
import { useStore } from '../state/useStore';
import { chatPath, navigate, openChatPath, type Route } from '../lib/router';
import { ChatView } from './ChatView';
import { NewChatDialog } from './NewChatDialog';
import { Sidebar } from './Sidebar';

/** The signed-in app: chat list on the left, the open chat on the right. */
export function Shell({
  session,
  route,
  onSignOut,
  onAuthExpired,
}: {
  session: Session;
  route: Route;
  onSignOut: () => void;
  onAuthExpired: () => void;
}) {
  const { api, store } = useMemo(() => {
    const api = new Api({ token: session.token, onUnauthorized: onAuthExpired });
    const socket = new ConfabSocket({ url: () => gatewaySocketUrl(session.token) });
    const store = new ChatStore({ api, socket, me: session.username, onAuthExpired });
    return { api, store };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [session.token, session.username]);
  const connection = useStore(store, (s) => s.connection);
  const activeKind = useStore(store, (s) => (route.name === 'chat' ? s.convs[route.id]?.kind : undefined));
  const totalUnread = useStore(store, (s) => Object.values(s.convs).reduce((n, c) => n + c.unread, 0));
  const [creating, setCreating] = useState(false);
  const activeId = route.name === 'chat' ? route.id : null;

  useEffect(() => {
    store.start();
    const online = () => store.reconnectNow();
    const visible = () => {
      if (document.visibilityState === 'visible' && store.getState().connection.status === 'reconnecting') {
        store.reconnectNow();
      }
    };
    window.addEventListener('online', online);
    document.addEventListener('visibilitychange', visible);
    return () => {
      window.removeEventListener('online', online);
      document.removeEventListener('visibilitychange', visible);
      store.dispose();
    };
  }, [store]);

  useEffect(() => {
    store.open(activeId);
  }, [store, activeId]);

  // An open (seed-style) chat has its own page.
  useEffect(() => {
    if (activeId && activeKind === 'open') navigate(openChatPath(activeId), { replace: true });
  }, [activeId, activeKind]);

  useEffect(() => {
    if (route.name !== 'chat') document.title = totalUnread ? `(${totalUnread}) Confab` : 'Confab';
  }, [totalUnread, route.name]);

  async function signOut() {
    // Close our socket first so the server's 4001 close for the revoked token
    // is not mistaken for an expired session.
    store.dispose();
    try {
      await api.signOut();
    } catch {
      /* the token is dropped locally either way */
    }
    onSignOut();
  }

  return (
    <div className="app" data-view={activeId ? 'chat' : 'list'}>
      <Sidebar
        store={store}
        me={session.username}
        activeId={activeId}
        connection={connection}
        onNewChat={() => setCreating(true)}
        onSignOut={() => void signOut()}
        onRetry={() => store.reconnectNow()}
      />
      <main className="main">
        {activeId ? (
          <ChatView
            key={activeId}
            store={store}
            api={api}
            id={activeId}
            me={session.username}
            onBack={() => navigate('/')}
          />
        ) : (
          <div className="center-note welcome">
            <h1>Welcome, {session.username}</h1>
            <p className="muted">Pick a chat on the left, or start a new one.</p>
            <button type="button" className="btn primary" onClick={() => setCreating(true)}>
              + New chat
            </button>
          </div>
        )}
      </main>
      {creating && (
        <NewChatDialog
          api={api}
          me={session.username}
          onClose={() => setCreating(false)}
          onCreate={async (title, members, assistant) => {
            const id = await store.createConversation(title, members, assistant);
            setCreating(false);
            navigate(chatPath(id));
          }}
        />
      )}
    </div>
  );
}
