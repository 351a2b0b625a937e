// REST client for the Confab gateway (relative URLs: same origin as the page).

import type {
  ConversationDetail,
  ConversationSummary,
  OpenSender,
} from './types';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export interface Session {
  token: string;
  username: string;
  expiresAt?: string;
}

type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface ApiOptions {
  token?: string | null;
  fetch?: FetchLike;
  base?: string;
  /** Called when a signed-in request is answered 401 (token expired/revoked). */
  onUnauthorized?: () => void;
}

export class Api {
  private readonly fetchImpl: FetchLike;
  private readonly base: string;

  constructor(private readonly options: ApiOptions = {}) {
    this.fetchImpl = options.fetch ?? ((i, init) => globalThis.fetch(i, init));
    this.base = options.base ?? '';
  }

  get token(): string | null {
    return this.options.token ?? null;
  }

  // ---- users & sessions ----------------------------------------------------

  signUp(username: string, password: string): Promise<{ username: string }> {
    return this.request('POST', '/api/users', { username, password }, { auth: false });
  }

  signIn(username: string, password: string): Promise<Session> {
    return this.request('POST', '/api/sessions', { username, password }, { auth: false });
  }

  signOut(): Promise<unknown> {
    return this.request('DELETE', '/api/sessions', undefined, { quiet401: true });
  }

  searchUsers(prefix: string, signal?: AbortSignal): Promise<string[]> {
    return this.request<{ users: string[] }>(
      'GET',
      `/api/users?prefix=${encodeURIComponent(prefix)}`,
      undefined,
      { signal },
    ).then((r) => (Array.isArray(r.users) ? r.users : []));
  }

  // ---- conversations -------------------------------------------------------

  listConversations(): Promise<ConversationSummary[]> {
    return this.request<{ conversations: ConversationSummary[] }>('GET', '/api/conversations').then(
      (r) => (Array.isArray(r.conversations) ? r.conversations : []),
    );
  }

  createConversation(body: {
    title?: string;
    members?: string[];
    assistant?: boolean;
  }): Promise<{ conversationId: string }> {
    return this.request('POST', '/api/conversations', body);
  }

  /** Creates an open (token-less) conversation. */
  createOpenConversation(assistant: boolean): Promise<{ conversationId: string }> {
    return this.request('POST', '/api/conversations', assistant ? { assistant: true } : {}, {
      auth: false,
    });
  }

  getConversation(id: string): Promise<ConversationDetail> {
    return this.request('GET', `/api/conversations/${encodeURIComponent(id)}`);
  }

  /** `idempotencyKey` (the message's clientId) makes a retry the same message. */
  postMessage(
    id: string,
    body: { content: string; timestamp?: string; sender?: OpenSender },
    idempotencyKey?: string,
  ): Promise<{ messageId: string }> {
    return this.request('POST', `/api/conversations/${encodeURIComponent(id)}/messages`, body, {
      idempotencyKey,
    });
  }

  deleteMessage(id: string, messageId: string): Promise<unknown> {
    return this.request(
      'DELETE',
      `/api/conversations/${encodeURIComponent(id)}/messages/${encodeURIComponent(messageId)}`,
    );
  }

  addMember(id: string, username: string): Promise<{ conversationId: string; members: string[] }> {
    return this.request('POST', `/api/conversations/${encodeURIComponent(id)}/members`, {
      username,
    });
  }

  cancelAssistant(id: string): Promise<unknown> {
    return this.request('POST', `/api/conversations/${encodeURIComponent(id)}/assistant/cancel`);
  }

  // ---- plumbing ------------------------------------------------------------

  private async request<T>(
    method: string,
    path: string,
    body?: unknown,
    opts: { auth?: boolean; signal?: AbortSignal; quiet401?: boolean; idempotencyKey?: string } = {},
  ): Promise<T> {
    const headers: Record<string, string> = { Accept: 'application/json' };
    if (opts.idempotencyKey) headers['Idempotency-Key'] = opts.idempotencyKey;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const useAuth = opts.auth !== false && !!this.options.token;
    if (useAuth) headers.Authorization = `Bearer ${this.options.token}`;
    let res: Response;
    try {
      res = await this.fetchImpl(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: opts.signal,
      });
    } catch (err) {
      if (err instanceof DOMException && err.name === 'AbortError') throw err;
      throw new ApiError(0, 'network_error', 'Cannot reach the server. Check your connection.');
    }
    let data: unknown = null;
    const text = await res.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!res.ok) {
      const e = (data as { error?: { code?: string; message?: string } } | null)?.error;
      const code = e?.code ?? `http_${res.status}`;
      const message = e?.message ?? defaultMessage(res.status);
      if (res.status === 401 && useAuth && !opts.quiet401) this.options.onUnauthorized?.();
      throw new ApiError(res.status, code, message);
    }
    return data as T;
  }
}

function defaultMessage(status: number): string {
  if (status === 401) return 'Please sign in again.';
  if (status === 404) return 'Not found.';
  if (status === 429) return 'Too many requests — please wait a moment.';
  if (status >= 500) return 'The server had a problem. Please try again.';
  return `Request failed (${status}).`;
}
