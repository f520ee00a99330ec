//! Recognising a recording's container from its first bytes, to check that uploaded bytes are
//! what the client declared (an upload declared `webm` that is really something else is refused
//! before a speech-to-text provider is asked to decode it).
//!
//! Only the first [`SNIFF_LEN`] bytes are looked at: the answer never depends on what follows
//! them, and nothing is parsed beyond a few fixed magic numbers.

use teachback_events::AudioFormat;

/// How many leading bytes [`sniff`] reads at most.
pub const SNIFF_LEN: usize = 12;

/// The container format `bytes` start with, if it is one a recording may be uploaded in:
///
/// - WAV: `RIFF` + 4-byte size + `WAVE`.
/// - WebM (and Matroska, which WebM is a profile of): the EBML magic `1A 45 DF A3`.
/// - Ogg: `OggS`.
/// - MP4/M4A: an `ftyp` box at offset 4.
/// - MP3: an `ID3` tag, or an MPEG audio frame header (an 11-bit frame sync `0xFFE`, with a
///   valid version, a layer that is not AAC's ADTS `00`, a bitrate index other than `1111` and a
///   sample-rate index other than `11`).
///
/// Raw PCM has no header and is never recognised; neither is text.
pub fn sniff(bytes: &[u8]) -> Option<AudioFormat> {
    let head = &bytes[..bytes.len().min(SNIFF_LEN)];
    if head.len() >= 12 && head.starts_with(b"RIFF") && &head[8..12] == b"WAVE" {
        return Some(AudioFormat::Wav);
    }
    if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return Some(AudioFormat::Webm);
    }
    if head.starts_with(b"OggS") {
        return Some(AudioFormat::Ogg);
    }
    if head.len() >= 8 && &head[4..8] == b"ftyp" {
        return Some(AudioFormat::Mp4);
    }
    if head.starts_with(b"ID3") || mpeg_audio_frame(head) {
        return Some(AudioFormat::Mp3);
    }
    None
}

/// Whether `head` starts with a plausible MPEG-1/2/2.5 audio frame header.
fn mpeg_audio_frame(head: &[u8]) -> bool {
    let [b0, b1, b2, ..] = *head else {
        return false;
    };
    let sync = b0 == 0xFF && b1 & 0xE0 == 0xE0;
    let version = (b1 >> 3) & 0b11; // 01 is reserved
    let layer = (b1 >> 1) & 0b11; // 00 is reserved (and is AAC's ADTS)
    let bitrate = b2 >> 4; // 1111 is invalid
    let rate = (b2 >> 2) & 0b11; // 11 is reserved
    sync && version != 0b01 && layer != 0b00 && bitrate != 0b1111 && rate != 0b11
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::segment::wav;

    #[test]
    fn recognises_each_container() {
        assert_eq!(sniff(&wav(&[0, 0, 1, 0], 16_000)), Some(AudioFormat::Wav));
        assert_eq!(
            sniff(&[0x1A, 0x45, 0xDF, 0xA3, 0x9F, 0x42, 0x86, 0x81, 0x01]),
            Some(AudioFormat::Webm)
        );
        assert_eq!(sniff(b"OggS\0\x02\0\0\0\0\0\0\0\0"), Some(AudioFormat::Ogg));
        assert_eq!(sniff(b"\0\0\0\x20ftypM4A \0\0\0\0"), Some(AudioFormat::Mp4));
        assert_eq!(sniff(b"\0\0\0\x18ftypisom"), Some(AudioFormat::Mp4));
        assert_eq!(sniff(b"ID3\x04\0\0\0\0\0\x21"), Some(AudioFormat::Mp3));
        // MPEG-1 Layer III, 128 kbit/s, 44.1 kHz.
        assert_eq!(sniff(&[0xFF, 0xFB, 0x90, 0x64]), Some(AudioFormat::Mp3));
        // MPEG-2 Layer III, 64 kbit/s, 22.05 kHz.
        assert_eq!(sniff(&[0xFF, 0xF3, 0x80, 0xC4]), Some(AudioFormat::Mp3));
    }

    #[test]
    fn refuses_what_is_not_a_recording() {
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"RIFF"), None);
        assert_eq!(sniff(b"RIFF\0\0\0\0AVI LIST"), None, "RIFF but not WAVE");
        assert_eq!(sniff(b"OggZ"), None);
        assert_eq!(sniff(b"{\"type\":\"start\"}"), None);
        assert_eq!(sniff(b"<html><body>"), None);
        assert_eq!(
            sniff(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]),
            None
        );
        assert_eq!(
            sniff(&[0, 0, 1, 0, 0xFF, 0x7F, 0x00, 0x80]),
            None,
            "raw PCM"
        );
        // AAC in ADTS: frame sync, but layer 00.
        assert_eq!(sniff(&[0xFF, 0xF1, 0x50, 0x80]), None);
        // Frame sync with a reserved version, a bad bitrate or a reserved sample rate.
        assert_eq!(sniff(&[0xFF, 0xEB, 0x90, 0x64]), None);
        assert_eq!(sniff(&[0xFF, 0xFB, 0xF0, 0x64]), None);
        assert_eq!(sniff(&[0xFF, 0xFB, 0x9C, 0x64]), None);
        assert_eq!(sniff(&[0xFF, 0xFB]), None, "too short for a frame header");
    }

    #[test]
    fn only_the_first_bytes_matter() {
        let samples: [&[u8]; 4] = [
            &wav(&[1, 2], 8_000),
            b"OggS",
            &[0xFF, 0xFB, 0x90],
            b"not audio at all",
        ];
        for bytes in samples {
            let head = &bytes[..bytes.len().min(SNIFF_LEN)];
            for tail in [&b""[..], b"OggS", b"\x1A\x45\xDF\xA3", b"RIFF\0\0\0\0WAVE"] {
                let mut longer = bytes.to_vec();
                longer.extend_from_slice(tail);
                assert_eq!(sniff(&longer), sniff(bytes));
                assert_eq!(sniff(head), sniff(bytes));
            }
        }
    }
}
