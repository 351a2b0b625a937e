// Accessible modal dialog: role=dialog + aria-modal, labelled by its title,
// focus moves in on open, Tab/Shift+Tab are trapped inside, Esc closes,
// focus returns to the element that opened it.
import { useEffect, useId, useRef, type ReactNode } from 'react';
import { createPortal } from 'react-dom';

const FOCUSABLE =
  'a[href], button:not([disabled]), input:not([disabled]), textarea:not([disabled]), select:not([disabled]), [tabindex]:not([tabindex="-1"])';

export function Modal({
  title,
  onClose,
  children,
  initialFocus,
  description,
}: {
  title: string;
  onClose: () => void;
  children: ReactNode;
  /** CSS selector (inside the dialog) of the element to focus first. */
  initialFocus?: string;
  description?: string;
}) {
  const ref = useRef<HTMLDivElement>(null);
  const titleId = useId();
  const descId = useId();
  const onCloseRef = useRef(onClose);
  onCloseRef.current = onClose;

  useEffect(() => {
    const opener = document.activeElement as HTMLElement | null;
    const root = ref.current;
    if (root) {
      const first =
        (initialFocus ? root.querySelector<HTMLElement>(initialFocus) : null) ??
        root.querySelector<HTMLElement>(FOCUSABLE) ??
        root;
      first.focus();
    }
    // Everything behind the dialog is inert (no focus, hidden from assistive tech).
    const appRoot = document.getElementById('root');
    const hadInert = appRoot?.hasAttribute('inert');
    if (appRoot && !hadInert) appRoot.setAttribute('inert', '');
    return () => {
      if (appRoot && !hadInert) appRoot.removeAttribute('inert');
      if (opener && typeof opener.focus === 'function' && document.contains(opener)) opener.focus();
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  function onKeyDown(e: React.KeyboardEvent<HTMLDivElement>) {
    if (e.key === 'Escape') {
      if (e.defaultPrevented) return; // a child (e.g. an open listbox) handled it
      e.stopPropagation();
      onCloseRef.current();
      return;
    }
    if (e.key !== 'Tab') return;
    const root = ref.current;
    if (!root) return;
    const items = [...root.querySelectorAll<HTMLElement>(FOCUSABLE)];
    if (items.length === 0) {
      e.preventDefault();
      root.focus();
      return;
    }
    const first = items[0]!;
    const last = items[items.length - 1]!;
    const active = document.activeElement;
    if (e.shiftKey && (active === first || !root.contains(active))) {
      e.preventDefault();
      last.focus();
    } else if (!e.shiftKey && (active === last || !root.contains(active))) {
      e.preventDefault();
      first.focus();
    }
  }

  return createPortal(
    <div
      className="modal-backdrop"
      onMouseDown={(e) => {
        if (e.target === e.currentTarget) onCloseRef.current();
      }}
    >
      <div
        ref={ref}
        className="modal"
        role="dialog"
        aria-modal="true"
        aria-labelledby={titleId}
        aria-describedby={description ? descId : undefined}
        tabIndex={-1}
        onKeyDown={onKeyDown}
      >
        <div className="modal-head">
          <h2 id={titleId}>{title}</h2>
          <button type="button" className="icon-btn" aria-label="Close dialog" onClick={() => onCloseRef.current()}>
            ×
          </button>
        </div>
        {description && (
          <p id={descId} className="muted">
            {description}
          </p>
        )}
        {children}
      </div>
    </div>,
    document.body,
  );
}
