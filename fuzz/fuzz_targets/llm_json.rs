//! The grading model's output: the streaming extraction of the feedback prose
//! (`teachback::grade::llm::FeedbackText`) and the tolerant parse (`teachback::grade::llm::parse`).
//!
//! Properties: no panic; feeding the text in any pieces (one, char by char, fixed sizes,
//! pseudo-random splits) streams the same prose; for a text that is a JSON object, the prose is
//! the first top-level string-valued `feedback` as serde_json reads it (escapes and surrogate
//! pairs included; the extractor drops `\r`, `\b` and `\f`, so those are left out on both sides);
//! a parsed grade is in range, trimmed, and parsing its own JSON gives it back.
#![no_main]

use std::fmt;

use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use teachback::grade::llm::{FeedbackText, parse};

/// A JSON object's entries in order, duplicates kept.
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Entries, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

fn stream(text: &str, splits: impl IntoIterator<Item = usize>) -> String {
    let mut extractor = FeedbackText::new();
    let mut out = String::new();
    let mut start = 0;
    for split in splits {
        let mut split = split.clamp(start, text.len());
        while !text.is_char_boundary(split) {
            split += 1;
        }
        out.push_str(&extractor.push(&text[start..split]));
        start = split;
    }
    out.push_str(&extractor.push(&text[start..]));
    out
}

fn without_dropped(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '\r' | '\u{8}' | '\u{c}'))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    let whole = stream(text, []);
    assert_eq!(stream(text, 1..text.len()), whole, "char by char");
    for size in [2, 7, 16] {
        assert_eq!(
            stream(text, (size..text.len()).step_by(size)),
            whole,
            "pieces of {size}"
        );
    }
    let mut state = data.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    });
    let mut splits = Vec::new();
    let mut at = 0;
    while at < text.len() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        at += (state >> 59) as usize;
        splits.push(at);
    }
    assert_eq!(stream(text, splits), whole, "random pieces");

    if let Ok(Entries(entries)) = serde_json::from_str::<Entries>(text) {
        let expected = entries
            .iter()
            .find_map(|(k, v)| match v {
                Value::String(s) if k == "feedback" => Some(s.as_str()),
                _ => None,
            })
            .unwrap_or("");
        assert_eq!(without_dropped(&whole), without_dropped(expected));
    }

    if let Ok(grade) = parse(text) {
        let subs = grade.sub_scores;
        for score in [
            grade.score,
            subs.accuracy,
            subs.completeness,
            subs.clarity,
            subs.structure,
        ] {
            assert!(score <= 100, "{grade:?}");
        }
        assert_eq!(grade.feedback.trim(), grade.feedback);
        for item in grade
            .strengths
            .iter()
            .chain(&grade.improvements)
            .chain(&grade.misconceptions)
        {
            assert!(!item.is_empty() && item.trim() == item, "{item:?}");
        }
        let json = serde_json::to_string(&grade).expect("grades serialise");
        assert_eq!(parse(&json).as_ref(), Ok(&grade), "{json}");
        assert_eq!(
            without_dropped(&stream(&json, [])),
            without_dropped(&grade.feedback)
        );
    }
});
