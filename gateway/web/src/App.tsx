import { Suspense, lazy, useCallback, useState } from 'react';
import type { Session } from './protocol/api';
import { clearSession, loadSession, saveSession } from './lib/session';
import { navigate, useRoute } from './lib/router';
import { AuthPage } from './components/AuthPage';

// The chat views (Markdown, highlighter) load on demand: the sign-in page stays light.
const Shell = lazy(() => import('./components/Shell').then((m) => ({ default: m.Shell })));
const OpenChatPage = lazy(() => import('./components/OpenChatPage').then((m) => ({ default: m.OpenChatPage })));

function Loading() {
  return (
    <p className="boot muted" role="status">
      Loading…
    </p>
  );
}

export function App() {
  const route = useRoute();
  const [session, setSession] = useState<Session | null>(() => loadSession());
  const [notice, setNotice] = useState<string | null>(null);

  const signedIn = useCallback((s: Session) => {
    saveSession(s);
    setNotice(null);
    setSession(s);
  }, []);

  const signedOut = useCallback(() => {
    clearSession();
    setSession(null);
    navigate('/');
  }, []);

  const expired = useCallback(() => {
    clearSession();
    setSession(null);
    setNotice('Your session has ended. Please sign in again.');
  }, []);

  if (route.name === 'open') {
    return (
      <Suspense fallback={<Loading />}>
        <OpenChatPage key={route.id} id={route.id} signedIn={!!session} />
      </Suspense>
    );
  }
  if (!session) return <AuthPage onSignedIn={signedIn} notice={notice} />;
  return (
    <Suspense fallback={<Loading />}>
      <Shell key={session.token} session={session} route={route} onSignOut={signedOut} onAuthExpired={expired} />
    </Suspense>
  );
}
