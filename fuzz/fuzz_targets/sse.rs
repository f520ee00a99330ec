//! Provider event streams: `teachback::provider::SseParser` (OpenAI-style `text/event-stream`).
//!
//! Properties: no panic; the events (pushes then `finish()`) do not depend on how the bytes are
//! chunked: one push, byte by byte, fixed-size chunks and pseudo-random splits all agree; data
//! never holds a carriage return, names hold no line ends; `finish()` is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teachback::provider::{SseEvent, SseParser};

fn feed(input: &[u8], splits: impl IntoIterator<Item = usize>) -> Vec<SseEvent> {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut start = 0;
    for split in splits {
        let split = split.clamp(start, input.len());
        events.extend(parser.push(&input[start..split]));
        start = split;
    }
    events.extend(parser.push(&input[start..]));
    events.extend(parser.finish());
    assert_eq!(parser.finish(), None, "finish() twice");
    events
}

fuzz_target!(|data: &[u8]| {
    let whole = feed(data, []);
    for event in &whole {
        assert!(!event.data.contains('\r'), "{event:?}");
        if let Some(name) = &event.event {
            assert!(!name.contains(['\r', '\n']), "{event:?}");
        }
    }
    assert_eq!(feed(data, 1..data.len()), whole, "byte by byte");
    for size in [2, 3, 5, 64] {
        assert_eq!(
            feed(data, (size..data.len()).step_by(size)),
            whole,
            "chunks of {size}"
        );
    }
    // Pseudo-random splits, seeded by the input, including empty pushes.
    let mut state = data.iter().fold(0x9E37_79B9_7F4A_7C15u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    });
    let mut splits = Vec::new();
    let mut at = 0;
    while at < data.len() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        at += (state >> 59) as usize; // 0..=31
        splits.push(at);
    }
    assert_eq!(feed(data, splits), whole, "random splits");
});
