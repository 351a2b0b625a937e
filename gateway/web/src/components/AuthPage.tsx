import { useState } from 'react';
import { Api, ApiError, type Session } from '../protocol/api';
import { errorText } from '../state/store';
import { navigate, openChatPath } from '../lib/router';

export function AuthPage({
  onSignedIn,
  notice,
}: {
  onSignedIn: (s: Session) => void;
  notice?: string | null;
}) {
  const [mode, setMode] = useState<'signin' | 'signup'>('signin');
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [joinId, setJoinId] = useState('');
  const [openBusy, setOpenBusy] = useState(false);
  const [openError, setOpenError] = useState<string | null>(null);

  async function submit(e: React.FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    const api = new Api();
    try {
      if (mode === 'signup') await api.signUp(username.trim(), password);
      const s = await api.signIn(username.trim(), password);
      onSignedIn({ token: s.token, username: s.username ?? username.trim(), expiresAt: s.expiresAt });
    } catch (err) {
      setError(
        err instanceof ApiError && err.code === 'invalid_credentials'
          ? 'Wrong username or password.'
          : err instanceof ApiError && err.code === 'username_taken'
            ? 'That username is taken — try another.'
            : errorText(err),
      );
      setBusy(false);
    }
  }

  async function startOpen() {
    setOpenBusy(true);
    setOpenError(null);
    try {
      const api = new Api();
      // With the assistant, where the server allows it in open conversations
      // (ASSISTANT_IN_OPEN_CONVERSATIONS); otherwise a plain open conversation.
      const { conversationId } = await api
        .createOpenConversation(true)
        .catch((err: unknown) => {
          if (err instanceof ApiError && err.code === 'assistant_disabled') {
            return api.createOpenConversation(false);
          }
          throw err;
        });
      navigate(openChatPath(conversationId));
    } catch (err) {
      setOpenError(errorText(err));
      setOpenBusy(false);
    }
  }

  const signup = mode === 'signup';
  return (
    <main className="auth">
      <div className="auth-card">
        <div className="brand big">
          <span className="logo" aria-hidden="true">
            ◆
          </span>
          Confab
        </div>
        <p className="muted">Real-time chat with a helpful assistant.</p>
        {notice && (
          <p className="banner warn" role="status">
            {notice}
          </p>
        )}
        <div className="tabs" role="group" aria-label="Account">
          <button type="button" aria-pressed={!signup} className={!signup ? 'on' : ''} onClick={() => setMode('signin')}>
            Sign in
          </button>
          <button type="button" aria-pressed={signup} className={signup ? 'on' : ''} onClick={() => setMode('signup')}>
            Sign up
          </button>
        </div>
        <form className="stack" onSubmit={submit} aria-label={signup ? 'Sign up' : 'Sign in'}>
          <div className="field">
            <label htmlFor="auth-username">Username</label>
            <input
              id="auth-username"
              name="username"
              autoComplete="username"
              autoCapitalize="none"
              spellCheck={false}
              required
              value={username}
              aria-describedby={signup ? 'auth-username-hint' : undefined}
              onChange={(e) => setUsername(e.target.value)}
            />
            {signup && (
              <span id="auth-username-hint" className="muted small">
                3–32 characters: a–z, 0–9, “_”, “.”, “-”
              </span>
            )}
          </div>
          <div className="field">
            <label htmlFor="auth-password">Password</label>
            <input
              id="auth-password"
              name="password"
              type="password"
              autoComplete={signup ? 'new-password' : 'current-password'}
              required
              value={password}
              minLength={signup ? 8 : undefined}
              aria-describedby={signup ? 'auth-password-hint' : undefined}
              onChange={(e) => setPassword(e.target.value)}
            />
            {signup && (
              <span id="auth-password-hint" className="muted small">
                At least 8 characters
              </span>
            )}
          </div>
          {error && (
            <p className="form-error" role="alert">
              {error}
            </p>
          )}
          <button type="submit" className="btn primary wide" disabled={busy}>
            {busy ? 'Please wait…' : signup ? 'Create account' : 'Sign in'}
          </button>
        </form>
        <div className="divider">
          <span>or</span>
        </div>
        <form
          className="stack"
          aria-label="Join by id"
          onSubmit={(e) => {
            e.preventDefault();
            const id = joinId.trim();
            if (id) navigate(openChatPath(id));
          }}
        >
          <div className="field">
            <label htmlFor="join-id">Open a conversation by id</label>
            <div className="row">
              <input
                id="join-id"
                autoComplete="off"
                spellCheck={false}
                placeholder="Conversation id"
                value={joinId}
                onChange={(e) => setJoinId(e.target.value)}
              />
              <button type="submit" className="btn" disabled={!joinId.trim()}>
                Join
              </button>
            </div>
          </div>
        </form>
        <button type="button" className="btn ghost wide" onClick={() => void startOpen()} disabled={openBusy}>
          {openBusy ? 'Starting…' : 'Start an open chat (no account)'}
        </button>
        {openError && (
          <p className="form-error" role="alert">
            {openError}
          </p>
        )}
      </div>
    </main>
  );
}
