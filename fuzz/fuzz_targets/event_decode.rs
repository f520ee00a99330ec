//! Stored events: `teachback_events::Event::decode(event_type, schema_version, payload)`,
//! including the upcasting of older schema versions.
//!
//! Input: `<event type>\n<schema version>\n<payload JSON>` (text; seeds are the snapshots in
//! `events/tests/snapshots`). A type line `#<n>` stands for the n-th real kind of
//! `EventKind::ALL` so that every kind is reached whatever the fuzzer does to the name.
//!
//! Properties: no panic; an unknown name is `UnknownType`, a version above the current one is
//! `FutureVersion`; a decoded event has the kind it was asked for, and re-encoding it and
//! decoding at the current version (also through JSON text) gives the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use teachback_events::{DecodeError, Event, EventKind};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let (Some(name), Some(version), Some(payload)) = (lines.next(), lines.next(), lines.next())
    else {
        return;
    };
    let name = match name.strip_prefix('#').and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => EventKind::ALL[n % EventKind::ALL.len()].type_name(),
        None => name,
    };
    let Ok(version) = version.trim().parse::<u32>() else {
        return;
    };
    let Ok(payload) = serde_json::from_str::<Value>(payload) else {
        return;
    };
    let kind = EventKind::from_type_name(name);
    match Event::decode(name, version, payload) {
        Ok(event) => {
            let kind = kind.expect("decoded an unknown type");
            assert_eq!(event.kind(), kind);
            assert!(version >= 1 && version <= kind.schema_version());
            let current = kind.schema_version();
            let again = Event::decode(name, current, event.to_payload())
                .unwrap_or_else(|e| panic!("re-encoded {name} does not decode: {e}"));
            assert_eq!(again, event);
            let text = serde_json::to_string(&event.to_payload()).expect("payloads serialise");
            let value: Value = serde_json::from_str(&text).expect("payload text is JSON");
            assert_eq!(Event::decode(name, current, value).expect("decodes"), event);
        }
        Err(error) => {
            let _ = error.to_string();
            match (&error, kind) {
                (DecodeError::UnknownType(n), None) => assert_eq!(n, name),
                (_, None) => panic!("an unknown type gave {error:?}"),
                (DecodeError::FutureVersion { found, current, .. }, Some(kind)) => {
                    assert_eq!(*found, version);
                    assert_eq!(*current, kind.schema_version());
                    assert!(version > kind.schema_version());
                }
                (DecodeError::UnknownType(_), Some(_)) => panic!("a known type was unknown"),
                (_, Some(kind)) => assert!(version <= kind.schema_version(), "{error:?}"),
            }
        }
    }
});
