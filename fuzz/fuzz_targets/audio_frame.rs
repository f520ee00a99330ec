//! Binary audio frames and the PCM inside them: `split_audio`/`audio_frame` and the
//! voice-activity `Segmenter`.
//!
//! Input: byte 0 picks the sample rate, bytes 1..=4 the segmenting rules; the rest is a sequence
//! of frames, each a 1-byte length followed by that many bytes (as the client would send them).
//!
//! Properties: `split_audio` refuses exactly the frames shorter than the 8-byte header and
//! round-trips with `audio_frame`; the segmenter is chunking-independent (a second segmenter fed
//! the same audio one byte at a time agrees at every chunk boundary); it never leaves a segment
//! open at or past the maximum length and never closes one before the pause length unless at
//! the maximum length; the closed segments concatenate to all the audio; each segment survives
//! the WAV round trip.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use teachback::live::protocol::{SAMPLE_RATES, SEQ_BYTES, audio_frame, split_audio};
use teachback::live::segment::{SegmentRules, Segmenter, pcm_ms, wav, wav_pcm};

/// Analysis frames are 20 ms.
const FRAME_MS: u64 = 20;

fuzz_target!(|data: &[u8]| {
    let [rate, pause, max_len, rms_lo, rms_hi, rest @ ..] = data else {
        return;
    };
    let rate = SAMPLE_RATES[usize::from(*rate) % SAMPLE_RATES.len()];
    // Short pauses and lengths so that small inputs reach the cuts.
    let rules = SegmentRules {
        pause: Duration::from_millis(u64::from(*pause) * 4),
        max_len: Duration::from_millis(1 + u64::from(*max_len) * 8),
        min_speech_rms: f64::from(u16::from_le_bytes([*rms_lo, *rms_hi])),
    };
    let max_len_ms = rules.max_len.as_millis() as u64;
    let pause_ms = rules.pause.as_millis() as u64;
    let frame_samples = (u64::from(rate) * FRAME_MS / 1000).max(1);
    let ms = |samples: u64| samples * 1000 / u64::from(rate);

    // The frames as a client sends them.
    let mut frames = Vec::new();
    let mut at = rest;
    while let [len, tail @ ..] = at {
        let len = usize::from(*len).min(tail.len());
        frames.push(&tail[..len]);
        at = &tail[len..];
    }

    let mut chunked = Segmenter::new(rules, rate);
    let mut bytewise = Segmenter::new(rules, rate);
    // A fresh segment holds no audio: nothing to close yet.
    let mut bytewise_cut = false;
    let mut all_audio = Vec::new();
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let mut open = Vec::new();
    // Bytes fed in total, and when the open segment began (samples are whole byte pairs).
    let mut total_bytes = 0u64;
    let mut segment_start = 0u64;

    for (seq, frame) in frames.iter().enumerate() {
        match split_audio(frame) {
            None => assert!(frame.len() < SEQ_BYTES),
            Some((seq_no, audio)) => {
                assert_eq!(audio_frame(seq_no, audio), *frame);
                assert_eq!(audio.len(), frame.len() - SEQ_BYTES);
            }
        }
        let built = audio_frame(seq as u64 + 1, frame);
        assert_eq!(split_audio(&built), Some((seq as u64 + 1, *frame)));

        // The PCM: the whole frame, so that odd and empty chunks are exercised too.
        let audio = *frame;
        let cut = chunked.push(audio);
        for &b in audio {
            bytewise_cut = bytewise.push(&[b]);
        }
        assert_eq!(
            cut,
            bytewise_cut,
            "chunking changed the decision after chunk {seq} ({} bytes)",
            audio.len()
        );
        total_bytes += audio.len() as u64;
        all_audio.extend_from_slice(audio);
        open.extend_from_slice(audio);
        let segment_samples = total_bytes / 2 - segment_start / 2;
        if cut {
            assert!(
                ms(segment_samples) >= max_len_ms
                    || ms(segment_samples + frame_samples) >= pause_ms,
                "closed a {} ms segment before the pause ({pause_ms} ms) or the maximum ({max_len_ms} ms)",
                ms(segment_samples)
            );
            segments.push(std::mem::take(&mut open));
            chunked.reset();
            bytewise.reset();
            bytewise_cut = false;
            segment_start = total_bytes;
        } else {
            assert!(
                ms(segment_samples) < max_len_ms,
                "a {} ms segment was left open past the maximum of {max_len_ms} ms",
                ms(segment_samples)
            );
        }
    }
    segments.push(open);
    assert_eq!(segments.concat(), all_audio);
    for segment in &segments {
        let file = wav(segment, rate);
        assert_eq!(wav_pcm(&file), Some(&segment[..]));
        let _ = pcm_ms(segment.len() as u64, rate);
    }
});
