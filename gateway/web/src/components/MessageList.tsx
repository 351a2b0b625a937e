import { memo, useLayoutEffect, useRef, useState } from 'react';
import type { AssistantResponse } from '../protocol/assembler';
import type { ChatMessage } from '../protocol/types';
import type { ConversationState, PendingMessage } from '../state/store';
import { formatTime, hueFor, initials } from '../lib/format';
import { Markdown } from './Markdown';

function senderLabel(sender: string): string {
  if (sender === 'assistant') return 'Assistant';
  if (sender === 'customer') return 'Customer';
  if (sender === 'agent') return 'Agent';
  return sender;
}

function Avatar({ name }: { name: string }) {
  if (name === 'assistant') {
    return (
      <span className="avatar assistant" aria-hidden="true">
        ✦
      </span>
    );
  }
  return (
    <span className="avatar" aria-hidden="true" style={{ '--hue': hueFor(name) } as React.CSSProperties}>
      {initials(name)}
    </span>
  );
}

const MessageBubble = memo(function MessageBubble({
  message,
  mine,
  stopped,
}: {
  message: ChatMessage;
  mine: boolean;
  stopped: boolean;
}) {
  const kind = message.sender === 'assistant' ? 'assistant' : mine ? 'mine' : 'theirs';
  return (
    <li className={`msg ${kind}`} data-message-id={message.messageId} data-sender={message.sender}>
      <Avatar name={message.sender} />
      <div className="bubble">
        <div className="meta">
          <span className="who">{mine ? 'You' : senderLabel(message.sender)}</span>
          <time dateTime={message.timestamp}>{formatTime(message.timestamp)}</time>
          {stopped && <span className="badge warn">Stopped</span>}
        </div>
        <Markdown text={message.content} />
      </div>
    </li>
  );
});

function StreamingBubble({ r }: { r: AssistantResponse }) {
  if (r.status === 'error') {
    return (
      <li className="msg assistant error" data-response-id={r.responseId}>
        <Avatar name="assistant" />
        <div className="bubble" role="alert">
          <div className="meta">
            <span className="who">Assistant</span>
            <span className="badge danger">Error</span>
          </div>
          {r.text && <Markdown text={r.text} />}
          <p className="error-text">{r.error?.message ?? 'The assistant could not answer.'}</p>
        </div>
      </li>
    );
  }
  const streaming = r.status === 'streaming';
  return (
    <li
      className={`msg assistant ${streaming ? 'streaming' : ''}`}
      data-response-id={r.responseId}
      data-status={r.status}
      aria-busy={streaming}
    >
      <Avatar name="assistant" />
      <div className="bubble">
        <div className="meta">
          <span className="who">Assistant</span>
          {streaming && <span className="badge">{r.text ? 'Answering…' : 'Thinking…'}</span>}
          {r.status === 'stopped' && <span className="badge warn">Stopped</span>}
        </div>
        {r.text ? <Markdown text={r.text} /> : <span className="dots" aria-label="Thinking" />}
      </div>
    </li>
  );
}

function PendingBubble({
  p,
  onRetry,
  onDismiss,
}: {
  p: PendingMessage;
  onRetry: () => void;
  onDismiss: () => void;
}) {
  return (
    <li className={`msg mine pending ${p.status}`} data-client-id={p.clientId}>
      <Avatar name={p.sender} />
      <div className="bubble">
        <div className="meta">
          <span className="who">You</span>
          {p.status === 'sending' ? (
            <span className="badge">Sending…</span>
          ) : (
            <span className="badge danger">Not sent</span>
          )}
        </div>
        <Markdown text={p.content} />
        {p.status === 'failed' && (
          <div className="pending-actions" role="alert">
            <span>{p.error}</span>
            <button type="button" className="link-btn" onClick={onRetry}>
              Retry
            </button>
            <button type="button" className="link-btn" onClick={onDismiss}>
              Dismiss
            </button>
          </div>
        )}
      </div>
    </li>
  );
}

export function MessageList({
  conv,
  me,
  onRetry,
  onDismiss,
}: {
  conv: ConversationState;
  me: string | null;
  onRetry: (clientId: string) => void;
  onDismiss: (clientId: string) => void;
}) {
  const ref = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  const [behind, setBehind] = useState(false);
  const lastText = conv.responses.map((r) => r.text.length).join(',');
  const count = conv.items.length + conv.pending.length + conv.responses.length;
  const seenCount = useRef(count);

  useLayoutEffect(() => {
    const el = ref.current;
    if (!el) return;
    if (stick.current) {
      el.scrollTop = el.scrollHeight;
      seenCount.current = count;
    } else if (count > seenCount.current) {
      setBehind(true); // new content below while the reader is scrolled up
    }
  }, [count, lastText, conv.id]);

  useLayoutEffect(() => {
    stick.current = true;
    setBehind(false);
  }, [conv.id]);

  // Keep the newest message in view when the pane changes size (rotation, resize, keyboard).
  useLayoutEffect(() => {
    const el = ref.current;
    if (!el || typeof ResizeObserver === 'undefined') return;
    const ro = new ResizeObserver(() => {
      if (stick.current) el.scrollTop = el.scrollHeight;
    });
    ro.observe(el);
    return () => ro.disconnect();
  }, []);

  function jump() {
    const el = ref.current;
    if (el) el.scrollTop = el.scrollHeight;
    stick.current = true;
    seenCount.current = count;
    setBehind(false);
  }

  const openChat = conv.kind === 'open';
  const empty = conv.loaded && !conv.items.length && !conv.pending.length && !conv.responses.length;

  return (
    <div
      ref={ref}
      className="messages"
      role="region"
      aria-label="Message history"
      tabIndex={0}
      onScroll={(e) => {
        const el = e.currentTarget;
        stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
        if (stick.current && behind) {
          seenCount.current = count;
          setBehind(false);
        }
      }}
    >
      {empty && <p className="empty muted">No messages yet — say hello.</p>}
      <ol className="timeline" role="log" aria-live="polite" aria-relevant="additions" aria-label="Messages">
        {conv.items.map((it) =>
          it.kind === 'note' ? (
            <li key={it.id} className="note">
              {it.text}
            </li>
          ) : (
            <MessageBubble
              key={it.message.messageId}
              message={it.message}
              mine={!openChat && !!me && it.message.sender === me}
              stopped={!!conv.stopped[it.message.messageId]}
            />
          ),
        )}
        {conv.responses.map((r) => (
          <StreamingBubble key={r.responseId} r={r} />
        ))}
        {conv.pending.map((p) => (
          <PendingBubble
            key={p.clientId}
            p={p}
            onRetry={() => onRetry(p.clientId)}
            onDismiss={() => onDismiss(p.clientId)}
          />
        ))}
      </ol>
      {behind && (
        <button type="button" className="jump btn primary small" onClick={jump}>
          New messages ↓
        </button>
      )}
    </div>
  );
}
