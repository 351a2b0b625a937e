import { useEffect, useState } from 'react';
import type { StatusInfo } from '../protocol/client';

export function connectionLabel(info: StatusInfo): string {
  switch (info.status) {
    case 'open':
      return 'Connected';
    case 'connecting':
    case 'idle':
      return 'Connecting…';
    case 'reconnecting':
      return 'Reconnecting…';
    case 'closed':
      return 'Offline';
  }
}

export function ConnectionStatus({ info, onRetry }: { info: StatusInfo; onRetry?: () => void }) {
  const [, tick] = useState(0);
  const waiting = info.status === 'reconnecting' && info.retryAt !== undefined;
  useEffect(() => {
    if (!waiting) return;
    const t = setInterval(() => tick((n) => n + 1), 500);
    return () => clearInterval(t);
  }, [waiting]);
  const secs = waiting ? Math.max(0, Math.ceil(((info.retryAt ?? 0) - Date.now()) / 1000)) : 0;
  return (
    <div className={`conn conn-${info.status}`}>
      <span className="conn-dot" aria-hidden="true" />
      <span role="status" aria-live="polite" className="conn-label">
        {connectionLabel(info)}
      </span>
      {waiting && secs > 0 && (
        <span className="conn-detail" aria-hidden="true">
          {secs}s
        </span>
      )}
      {info.status === 'reconnecting' && onRetry && (
        <button type="button" className="link-btn" onClick={onRetry} aria-label="Retry connecting now">
          Retry
        </button>
      )}
    </div>
  );
}
