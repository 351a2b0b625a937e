import type { Session } from '../protocol/api';

const KEY = 'confab.session';

export function loadSession(storage: Storage | undefined = safeStorage()): Session | null {
  try {
    const raw = storage?.getItem(KEY);
    if (!raw) return null;
    const v = JSON.parse(raw) as Partial<Session>;
    if (typeof v.token !== 'string' || typeof v.username !== 'string' || !v.token) return null;
    return { token: v.token, username: v.username, expiresAt: v.expiresAt };
  } catch {
    return null;
  }
}

export function saveSession(s: Session, storage: Storage | undefined = safeStorage()): void {
  try {
    storage?.setItem(KEY, JSON.stringify({ token: s.token, username: s.username, expiresAt: s.expiresAt }));
  } catch {
    /* storage full / disabled: the session just won't survive a reload */
  }
}

export function clearSession(storage: Storage | undefined = safeStorage()): void {
  try {
    storage?.removeItem(KEY);
  } catch {
    /* ignore */
  }
}

function safeStorage(): Storage | undefined {
  try {
    return typeof localStorage === 'undefined' ? undefined : localStorage;
  } catch {
    return undefined;
  }
}
