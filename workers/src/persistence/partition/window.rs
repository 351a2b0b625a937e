//! The entries of a partition's stream in hand: read after the committed offset, applied in
//! order, committed (and dropped) from the front once done.

use std::collections::{HashMap, VecDeque};

use confab_shared::commands::{CommandEnvelope, COMMAND_FIELD};

/// One stream entry.
pub struct Slot {
    pub id: String,
    pub command: Result<CommandEnvelope, String>,
    /// What a dead letter keeps: the command, or the whole entry when there is none.
    pub raw: String,
    pub done: bool,
    /// Deterministic failures so far (a script error); transient ones do not count.
    pub failures: u64,
    /// Try send.lua (a plain send); cleared once it declined.
    pub fast: bool,
}

impl Slot {
    pub fn from_entry(entry: redis::streams::StreamId) -> Slot {
        let raw = entry
            .map
            .get(COMMAND_FIELD)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
        let command = match &raw {
            Some(raw) => serde_json::from_str(raw).map_err(|e| format!("malformed command: {e}")),
            None => Err(format!("entry has no '{COMMAND_FIELD}' field")),
        };
        let raw = raw.unwrap_or_else(|| {
            let fields: HashMap<&String, String> = entry
                .map
                .iter()
                .map(|(k, v)| {
                    (
                        k,
                        redis::from_redis_value_ref::<String>(v).unwrap_or_default(),
                    )
                })
                .collect();
            serde_json::to_string(&fields).unwrap_or_default()
        });
        Slot {
            id: entry.id,
            command,
            raw,
            done: false,
            failures: 0,
            fast: true,
        }
    }
}

#[derive(Default)]
pub struct Window {
    slots: VecDeque<Slot>,
}

impl Window {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn has_todo(&self) -> bool {
        self.slots.iter().any(|s| !s.done)
    }

    pub fn extend(&mut self, slots: Vec<Slot>) {
        self.slots.extend(slots);
    }

    /// How many entries at the front are done, and the last of them.
    pub fn done_prefix(&self) -> (usize, Option<String>) {
        let n = self.slots.iter().take_while(|s| s.done).count();
        let last = n
            .checked_sub(1)
            .and_then(|i| self.slots.get(i))
            .map(|s| s.id.clone());
        (n, last)
    }

    /// Forgets the first `n` entries (committed).
    pub fn drop_front(&mut self, n: usize) {
        self.slots.drain(..n.min(self.slots.len()));
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.slots.iter_mut()
    }

    pub fn get(&self, i: usize) -> Option<&Slot> {
        self.slots.get(i)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut Slot> {
        self.slots.get_mut(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, fields: &[(&str, &str)]) -> redis::streams::StreamId {
        redis::streams::StreamId {
            id: id.into(),
            map: fields
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        redis::Value::BulkString(v.as_bytes().to_vec()),
                    )
                })
                .collect(),
            milliseconds_elapsed_from_delivery: None,
            delivered_count: None,
        }
    }

    #[test]
    fn entries_without_a_command_are_poison_and_keep_their_fields() {
        let s = Slot::from_entry(entry("1-0", &[("x", "no command field")]));
        assert!(s.command.is_err());
        assert!(s.raw.contains("no command field"), "{}", s.raw);
        let s = Slot::from_entry(entry("1-1", &[("c", "{not json")]));
        assert!(s.command.is_err());
        assert_eq!(s.raw, "{not json");
    }

    #[test]
    fn the_done_prefix_stops_at_the_first_entry_still_to_do() {
        let mut w = Window::default();
        w.extend(
            ["1-0", "2-0", "3-0"]
                .iter()
                .map(|id| Slot::from_entry(entry(id, &[])))
                .collect(),
        );
        assert_eq!(w.done_prefix(), (0, None));
        for i in [0, 2] {
            if let Some(s) = w.get_mut(i) {
                s.done = true;
            }
        }
        assert_eq!(w.done_prefix(), (1, Some("1-0".into())));
        w.drop_front(1);
        assert_eq!(w.len(), 2);
        assert!(w.has_todo());
    }
}
