import { useId, useLayoutEffect, useRef, useState } from 'react';
import type { OpenSender } from '../protocol/types';

export function Composer({
  onSend,
  onTyping,
  onStop,
  streaming,
  disabled,
  disabledReason,
  openChat,
  placeholder,
}: {
  onSend: (text: string, sender?: OpenSender) => void;
  onTyping: (sender?: OpenSender) => void;
  onStop: () => void;
  /** The assistant is answering: show Stop. */
  streaming: boolean;
  disabled?: boolean;
  disabledReason?: string;
  /** Open (seed-style) chats pick who is speaking. */
  openChat?: boolean;
  placeholder?: string;
}) {
  const id = useId();
  const hintId = useId();
  const [text, setText] = useState('');
  const [sender, setSender] = useState<OpenSender>('customer');
  const ref = useRef<HTMLTextAreaElement>(null);

  useLayoutEffect(() => {
    const el = ref.current;
    if (!el) return;
    el.style.height = 'auto';
    el.style.height = `${Math.min(el.scrollHeight, 200)}px`;
  }, [text]);

  function submit() {
    if (disabled || !text.trim()) return;
    onSend(text, openChat ? sender : undefined);
    setText('');
    ref.current?.focus();
  }

  return (
    <form
      className="composer"
      onSubmit={(e) => {
        e.preventDefault();
        submit();
      }}
    >
      {openChat && (
        <fieldset className="sender-pick">
          <legend>Send as</legend>
          {(['customer', 'agent'] as const).map((s) => (
            <label key={s}>
              <input
                type="radio"
                name={`${id}-sender`}
                value={s}
                checked={sender === s}
                onChange={() => setSender(s)}
              />
              {s === 'customer' ? 'Customer' : 'Agent'}
            </label>
          ))}
        </fieldset>
      )}
      <div className="composer-row">
        <label htmlFor={id} className="visually-hidden">
          Message
        </label>
        <textarea
          id={id}
          ref={ref}
          rows={1}
          value={text}
          disabled={disabled}
          placeholder={disabled ? (disabledReason ?? '') : (placeholder ?? 'Write a message…')}
          aria-describedby={hintId}
          onChange={(e) => {
            setText(e.target.value);
            if (e.target.value.trim()) onTyping(openChat ? sender : undefined);
          }}
          onKeyDown={(e) => {
            if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing) {
              e.preventDefault();
              submit();
            }
          }}
        />
        {streaming && (
          <button type="button" className="btn danger" onClick={onStop}>
            Stop
          </button>
        )}
        <button type="submit" className="btn primary" disabled={disabled || !text.trim()}>
          Send
        </button>
      </div>
      <p id={hintId} className="composer-hint muted small">
        Enter to send · Shift+Enter for a new line · Markdown supported
      </p>
    </form>
  );
}
