import { useEffect, useMemo } from 'react';
import { Api } from '../protocol/api';
import { ConfabSocket, gatewaySocketUrl } from '../protocol/client';
import { ChatStore } from '../state/store';
import { useStore } from '../state/useStore';
import { navigate } from '../lib/router';
import { ChatView } from './ChatView';
import { ConnectionStatus } from './ConnectionStatus';

/** An open (seed-style) conversation, viewable and joinable by id without an account. */
export function OpenChatPage({ id, signedIn }: { id: string; signedIn: boolean }) {
  const { api, store, socket } = useMemo(() => {
    const api = new Api();
    const socket = new ConfabSocket({ url: () => gatewaySocketUrl(null) });
    const store = new ChatStore({ api, socket, me: null });
    return { api, store, socket };
  }, []);
  const connection = useStore(store, (s) => s.connection);

  useEffect(() => {
    store.start();
    const online = () => socket.reconnectNow();
    window.addEventListener('online', online);
    return () => {
      window.removeEventListener('online', online);
      store.dispose();
    };
  }, [store, socket]);

  useEffect(() => {
    store.open(id);
  }, [store, id]);

  return (
    <div className="open-page">
      <div className="open-bar">
        <a
          href="/"
          className="brand"
          onClick={(e) => {
            e.preventDefault();
            navigate('/');
          }}
        >
          <span className="logo" aria-hidden="true">
            ◆
          </span>
          Confab
        </a>
        <ConnectionStatus info={connection} onRetry={() => socket.reconnectNow()} />
        <a
          href="/"
          className="btn ghost small"
          onClick={(e) => {
            e.preventDefault();
            navigate('/');
          }}
        >
          {signedIn ? 'Your chats' : 'Sign in'}
        </a>
      </div>
      <main className="main">
        <ChatView store={store} api={api} id={id} me={null} />
      </main>
    </div>
  );
}
