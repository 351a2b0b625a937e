export function Chips({
  items,
  onRemove,
  label,
}: {
  items: readonly string[];
  onRemove: (item: string) => void;
  label: string;
}) {
  if (!items.length) return null;
  return (
    <ul className="chips" aria-label={label}>
      {items.map((u) => (
        <li key={u} className="chip">
          <span>{u}</span>
          <button type="button" aria-label={`Remove ${u}`} onClick={() => onRemove(u)}>
            ×
          </button>
        </li>
      ))}
    </ul>
  );
}
