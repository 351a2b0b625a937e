// A tiny history-API router: the app has three kinds of route.
//   /            chat list (or sign-in)
//   /chat/:id    a member chat
//   /c/:id       an open (seed-style) chat, viewable without signing in
import { useEffect, useState } from 'react';

export type Route =
  | { name: 'home' }
  | { name: 'chat'; id: string }
  | { name: 'open'; id: string };

export function parseRoute(pathname: string): Route {
  const chat = /^\/chat\/([^/]+)\/?$/.exec(pathname);
  if (chat?.[1]) return { name: 'chat', id: decodeURIComponent(chat[1]) };
  const open = /^\/c\/([^/]+)\/?$/.exec(pathname);
  if (open?.[1]) return { name: 'open', id: decodeURIComponent(open[1]) };
  return { name: 'home' };
}

export function chatPath(id: string): string {
  return `/chat/${encodeURIComponent(id)}`;
}

export function openChatPath(id: string): string {
  return `/c/${encodeURIComponent(id)}`;
}

const EVENT = 'confab:navigate';

export function navigate(path: string, opts: { replace?: boolean } = {}): void {
  if (path === location.pathname) return;
  if (opts.replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  window.dispatchEvent(new Event(EVENT));
}

export function useRoute(): Route {
  const [path, setPath] = useState(() => location.pathname);
  useEffect(() => {
    const update = () => setPath(location.pathname);
    window.addEventListener('popstate', update);
    window.addEventListener(EVENT, update);
    return () => {
      window.removeEventListener('popstate', update);
      window.removeEventListener(EVENT, update);
    };
  }, []);
  return parseRoute(path);
}
