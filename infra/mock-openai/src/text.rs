//! Reply text and the mock "tokenizer".
//!
//! A token is a word plus the whitespace that follows it; words longer than
//! [`MAX_PIECE_CHARS`] characters are split into pieces of at most that many
//! characters (the whitespace goes with the last piece). Leading whitespace
//! belongs to the first token. Concatenating the tokens gives back the text.

use std::time::{SystemTime, UNIX_EPOCH};

/// Opening of a `stamp` token: `⟨t=<unix micros>⟩ `.
pub const STAMP_OPEN: &str = "\u{27e8}t=";
/// Closing of a `stamp` token (followed by one space).
pub const STAMP_CLOSE: &str = "\u{27e9}";

/// Longest run of non-whitespace characters in one token.
pub const MAX_PIECE_CHARS: usize = 8;
/// Longest echo of the user's message in the demo reply, in characters.
pub const ECHO_CHARS: usize = 80;

/// Splits `text` into tokens; `tokenize(t).concat() == t`.
pub fn tokenize(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut word_chars = 0;
    let mut seen_word = false;
    let mut in_tail = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_tail = seen_word;
            continue;
        }
        if in_tail || word_chars == MAX_PIECE_CHARS {
            out.push(&text[start..i]);
            start = i;
            word_chars = 0;
            in_tail = false;
        }
        seen_word = true;
        word_chars += 1;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Number of tokens in `text`.
pub fn count_tokens(text: &str) -> usize {
    tokenize(text).len()
}

/// Prompt token estimate: tokens of every message plus a small per-message
/// overhead, like OpenAI's chat format accounting.
pub fn prompt_tokens<'a>(texts: impl IntoIterator<Item = &'a str>) -> u32 {
    let total: usize = texts.into_iter().map(|t| count_tokens(t) + 4).sum();
    u32::try_from(total + 3).unwrap_or(u32::MAX)
}

/// `w1 w2 … wN`: exactly `n` tokens.
pub fn numbered_reply(n: usize) -> String {
    let mut out = String::with_capacity(n * 6);
    for i in 1..=n {
        if i > 1 {
            out.push(' ');
        }
        out.push('w');
        out.push_str(&i.to_string());
    }
    out
}

/// Wall-clock microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The text of one `stamp` token: `⟨t=<micros>⟩ ` (always with one trailing space, so
/// concatenated tokens stay separate words).
pub fn stamp_token(micros: u64) -> String {
    format!("{STAMP_OPEN}{micros}{STAMP_CLOSE} ")
}

/// Every `⟨t=<micros>⟩` stamp in `text`, in order (malformed ones are skipped).
pub fn parse_stamps(text: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(STAMP_OPEN) {
        rest = &rest[at + STAMP_OPEN.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with(STAMP_CLOSE) {
            if let Ok(v) = rest[..digits].parse() {
                out.push(v);
            }
        }
    }
    out
}

/// Collapses whitespace and truncates to `max` characters (adding `…`).
pub fn preview(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, word) in text.split_whitespace().enumerate() {
        if n > 0 {
            out.push(' ');
        }
        out.push_str(word);
        if out.chars().count() > max {
            break;
        }
    }
    if out.chars().count() > max {
        let mut cut: String = out.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        out
    }
}

/// The demo model's deterministic Markdown answer.
///
/// States that this is Confab's local demo model (not OpenAI), how to switch
/// to a real model, quotes the user's message briefly and shows a table and
/// a fenced Rust code block so UIs can exercise their Markdown rendering.
pub fn demo_reply(user_text: &str) -> String {
    let echo = preview(user_text, ECHO_CHARS).replace('`', "'");
    let echo = if echo.is_empty() {
        "(an empty message)".to_string()
    } else {
        echo
    };
    format!(
        "**Hi! I am Confab's local demo model** \u{2014} a mock running on your machine, \
         not OpenAI, so this answer is canned. You wrote:\n\
         \n\
         > {echo}\n\
         \n\
         To get real answers, set `OPENAI_API_KEY` and restart Confab:\n\
         \n\
         | Variable | Purpose |\n\
         | --- | --- |\n\
         | `OPENAI_API_KEY` | your key (required) |\n\
         | `OPENAI_BASE_URL` | any compatible endpoint (optional) |\n\
         | `OPENAI_MODEL` | e.g. `gpt-4o-mini` (optional) |\n\
         \n\
         ```rust\n\
         fn main() {{\n    \
             println!(\"Hello from Confab!\");\n\
         }}\n\
         ```\n\
         \n\
         Streaming, Markdown and code rendering work end to end."
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_words_with_trailing_whitespace() {
        assert_eq!(
            tokenize("Hello, big world!\n"),
            vec!["Hello, ", "big ", "world!\n"]
        );
        assert_eq!(tokenize("  lead  two"), vec!["  lead  ", "two"]);
        assert_eq!(tokenize(""), Vec::<&str>::new());
        assert_eq!(tokenize("   "), vec!["   "]);
    }

    #[test]
    fn long_words_are_split_into_pieces() {
        assert_eq!(
            tokenize("internationalization rocks"),
            vec!["internat", "ionaliza", "tion ", "rocks"]
        );
        // Multi-byte characters are split on char boundaries.
        let t = "ééééééééééé x";
        assert_eq!(tokenize(t), vec!["éééééééé", "ééé ", "x"]);
    }

    #[test]
    fn tokens_concatenate_back_to_text() {
        let text = demo_reply("What is Rust? 🦀 ```code```");
        assert_eq!(tokenize(&text).concat(), text);
    }

    #[test]
    fn numbered_reply_has_exactly_n_tokens() {
        for n in [0, 1, 2, 17, 1000] {
            assert_eq!(count_tokens(&numbered_reply(n)), n);
        }
        assert_eq!(numbered_reply(3), "w1 w2 w3");
    }

    #[test]
    fn stamp_tokens_round_trip() {
        let t = stamp_token(1_732_245_600_123_456);
        assert_eq!(t, "\u{27e8}t=1732245600123456\u{27e9} ");
        let joined = [
            t.clone(),
            stamp_token(7),
            "noise \u{27e8}t=x\u{27e9} ".into(),
            stamp_token(9),
        ]
        .concat();
        assert_eq!(parse_stamps(&joined), vec![1_732_245_600_123_456, 7, 9]);
        assert_eq!(parse_stamps("w1 w2 \u{27e8}t=12"), Vec::<u64>::new());
        assert!(now_micros() > 1_600_000_000_000_000);
    }

    #[test]
    fn demo_reply_is_deterministic_and_in_budget() {
        let a = demo_reply("Tell me about the weather in Paris tomorrow please");
        assert_eq!(
            a,
            demo_reply("Tell me about the weather in Paris tomorrow please")
        );
        let n = count_tokens(&a);
        assert!((60..=120).contains(&n), "{n} tokens");
        let long = demo_reply(&"word ".repeat(500));
        assert!(count_tokens(&long) <= 120);
        for needle in [
            "local demo model",
            "not OpenAI",
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            "OPENAI_MODEL",
            "| --- | --- |",
            "```rust\n",
            "> Tell me about the weather",
        ] {
            assert!(a.contains(needle), "missing {needle:?}");
        }
    }

    #[test]
    fn preview_collapses_and_truncates() {
        assert_eq!(preview("  a \n b  ", 80), "a b");
        let p = preview(&"x".repeat(200), 10);
        assert_eq!(p.chars().count(), 10);
        assert!(p.ends_with('…'));
    }
}
