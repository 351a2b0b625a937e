// Username autocomplete following the ARIA combobox pattern (list autocomplete):
// input role=combobox with aria-expanded / aria-controls / aria-activedescendant,
// a role=listbox of role=option items; ↑/↓ move, Enter picks, Esc closes the
// list, clicking an option picks it. Suggestions come from a debounced
// GET /api/users?prefix=… (stale requests are aborted).
import { useEffect, useId, useRef, useState } from 'react';

export const SUGGEST_DEBOUNCE_MS = 200;

export function UserCombobox({
  label,
  search,
  exclude,
  onSelect,
  placeholder = 'Type a username…',
  autoFocus,
}: {
  label: string;
  search: (prefix: string, signal: AbortSignal) => Promise<string[]>;
  /** Usernames never suggested (you, already chosen, already members). */
  exclude: readonly string[];
  onSelect: (username: string) => void;
  placeholder?: string;
  autoFocus?: boolean;
}) {
  const inputId = useId();
  const listId = useId();
  const hintId = useId();
  const [text, setText] = useState('');
  const [options, setOptions] = useState<string[]>([]);
  const [open, setOpen] = useState(false);
  const [active, setActive] = useState(-1);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [searched, setSearched] = useState('');
  const excludeKey = exclude.join('\u0000');
  const searchRef = useRef(search);
  searchRef.current = search;

  useEffect(() => {
    const prefix = text.trim();
    if (!prefix) {
      setOptions([]);
      setLoading(false);
      setError(null);
      setSearched('');
      return;
    }
    const ctrl = new AbortController();
    setLoading(true);
    const timer = setTimeout(() => {
      searchRef
        .current(prefix, ctrl.signal)
        .then((users) => {
          if (ctrl.signal.aborted) return;
          const skip = new Set(excludeKey ? excludeKey.split('\u0000') : []);
          const list = users.filter((u) => !skip.has(u));
          setOptions(list);
          setActive(list.length ? 0 : -1);
          setOpen(true);
          setError(null);
          setSearched(prefix);
          setLoading(false);
        })
        .catch((err: unknown) => {
          if (ctrl.signal.aborted) return;
          setOptions([]);
          setError(err instanceof Error ? err.message : 'Search failed');
          setLoading(false);
        });
    }, SUGGEST_DEBOUNCE_MS);
    return () => {
      clearTimeout(timer);
      ctrl.abort();
    };
  }, [text, excludeKey]);

  const expanded = open && options.length > 0;

  function pick(u: string) {
    onSelect(u);
    setText('');
    setOptions([]);
    setOpen(false);
    setActive(-1);
  }

  function onKeyDown(e: React.KeyboardEvent<HTMLInputElement>) {
    switch (e.key) {
      case 'ArrowDown':
        e.preventDefault();
        if (!options.length) return;
        setOpen(true);
        setActive((a) => (expanded ? (a + 1) % options.length : Math.max(a, 0)));
        return;
      case 'ArrowUp':
        e.preventDefault();
        if (!options.length) return;
        setOpen(true);
        setActive((a) => (a <= 0 ? options.length - 1 : a - 1));
        return;
      case 'Enter':
        if (expanded && active >= 0 && options[active]) {
          e.preventDefault();
          pick(options[active]);
        } else if (text.trim()) {
          e.preventDefault(); // never submit the surrounding form from here
        }
        return;
      case 'Escape':
        if (expanded) {
          e.preventDefault();
          setOpen(false);
        } else if (text) {
          e.preventDefault();
          setText('');
        }
        return;
      default:
        return;
    }
  }

  const status = !text.trim()
    ? ''
    : loading
      ? 'Searching…'
      : error
        ? error
        : searched && options.length === 0
          ? `No users starting with “${searched}”`
          : options.length
            ? `${options.length} suggestion${options.length === 1 ? '' : 's'}, use up and down arrows to choose`
            : '';

  return (
    <div className="combo">
      <label htmlFor={inputId}>{label}</label>
      <input
        id={inputId}
        type="text"
        role="combobox"
        autoComplete="off"
        autoCapitalize="none"
        spellCheck={false}
        autoFocus={autoFocus}
        aria-autocomplete="list"
        aria-expanded={expanded}
        aria-controls={listId}
        aria-describedby={hintId}
        aria-activedescendant={expanded && active >= 0 ? `${listId}-opt-${active}` : undefined}
        placeholder={placeholder}
        value={text}
        onChange={(e) => {
          setText(e.target.value);
          setOpen(true);
        }}
        onKeyDown={onKeyDown}
        onBlur={() => setOpen(false)}
        onFocus={() => options.length && setOpen(true)}
      />
      <ul id={listId} role="listbox" aria-label={`${label} suggestions`} className="combo-list" hidden={!expanded}>
        {options.map((u, i) => (
          <li
            key={u}
            id={`${listId}-opt-${i}`}
            role="option"
            aria-selected={i === active}
            className={i === active ? 'active' : undefined}
            // mousedown (not click) so the input keeps focus and blur doesn't close the list first
            onMouseDown={(e) => {
              e.preventDefault();
              pick(u);
            }}
            onClick={() => pick(u)}
            onMouseMove={() => setActive(i)}
          >
            <span className="avatar xs" aria-hidden="true">
              {u.slice(0, 1).toUpperCase()}
            </span>
            {u}
          </li>
        ))}
      </ul>
      <div id={hintId} className="combo-status muted" aria-live="polite">
        {status}
      </div>
    </div>
  );
}
