//! The live WebSocket's text frames: exactly the server's parse path
//! (`teachback::http::live::parse`, after the 64 KiB frame limit).
//!
//! Properties: no panic; an accepted frame is a JSON object whose `type` names the variant it
//! became, and whatever serde accepts directly the server accepts identically; a refused frame
//! gets a non-fatal `invalid_message`/`unknown_message_type` error that serialises; a `start`
//! goes through `check_format` consistently; a `ping`'s nonce is echoed intact.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use teachback::http::live::parse;
use teachback::live::protocol::{
    CLIENT_TYPES, ClientMessage, MAX_FRAME_BYTES, SAMPLE_RATES, ServerMessage, check_format,
    valid_language,
};

fn type_name(message: &ClientMessage) -> &'static str {
    match message {
        ClientMessage::Start { .. } => "start",
        ClientMessage::Text { .. } => "text",
        ClientMessage::Reconnect { .. } => "reconnect",
        ClientMessage::Pause {} => "pause",
        ClientMessage::Resume {} => "resume",
        ClientMessage::Finish {} => "finish",
        ClientMessage::Cancel {} => "cancel",
        ClientMessage::Ping { .. } => "ping",
    }
}

fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    // tungstenite hands the server only valid UTF-8 text frames.
    let text = String::from_utf8_lossy(data);
    if text.len() > MAX_FRAME_BYTES {
        return; // closed with 1009 before parsing
    }
    let direct = serde_json::from_str::<ClientMessage>(&text);
    match parse(&text) {
        Ok(message) => {
            let value: Value = serde_json::from_str(&text).expect("an accepted frame is JSON");
            let kind = value["type"]
                .as_str()
                .expect("an accepted frame has a string type");
            assert_eq!(kind, type_name(&message));
            assert!(CLIENT_TYPES.split(", ").any(|t| t == kind));
            if let Ok(direct) = &direct {
                assert_eq!(format!("{direct:?}"), format!("{message:?}"));
            }
            match &message {
                ClientMessage::Start {
                    format,
                    sample_rate,
                    channels,
                    language,
                    ..
                } => {
                    if let Ok((parsed, rate)) = check_format(format, *sample_rate, *channels) {
                        assert_eq!(parsed.as_str(), format);
                        if parsed.is_pcm() {
                            assert!(SAMPLE_RATES.contains(&rate.expect("PCM has a rate")));
                            assert!(channels.is_none_or(|c| c == 1));
                        } else {
                            assert_eq!(rate, None);
                        }
                    }
                    if let Some(language) = language
                        && valid_language(language)
                    {
                        assert!(language.len() == 2 && language.is_ascii());
                    }
                }
                ClientMessage::Ping { nonce } => {
                    let pong = ServerMessage::Pong {
                        nonce: nonce.clone(),
                    }
                    .to_json();
                    let back: Value = serde_json::from_str(&pong).expect("pong is JSON");
                    assert_eq!(back["type"], "pong");
                    if let Some(nonce) = nonce
                        && !has_float(nonce)
                    {
                        assert_eq!(&back["nonce"], nonce);
                    }
                }
                _ => {}
            }
        }
        Err(error) => {
            assert!(
                direct.is_err(),
                "the server refused a frame serde accepts: {direct:?}"
            );
            let ServerMessage::Error {
                code,
                message,
                fatal,
                ..
            } = &*error
            else {
                panic!("a refusal is an error frame: {error:?}");
            };
            assert!(!fatal);
            assert!(
                matches!(*code, "invalid_message" | "unknown_message_type"),
                "{code}"
            );
            if *code == "unknown_message_type" {
                // The echoed type is clipped to 100 characters.
                assert!(
                    message.chars().count() <= 100 + CLIENT_TYPES.len() + 60,
                    "{message}"
                );
            }
            let json: Value = serde_json::from_str(&error.to_json()).expect("errors serialise");
            assert_eq!(json["type"], "error");
        }
    }
});
