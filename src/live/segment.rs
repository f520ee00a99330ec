//! Cutting streamed PCM into segments: an energy-based voice activity detector decides where the
//! learner pauses, and a segment is closed after a long enough pause or at a maximum length.
//!
//! Cuts fall only between chunks, so every segment holds whole chunks and the segments of a
//! lecture concatenate to exactly the audio that was sent.

use std::time::Duration;

/// Length of one analysis frame.
const FRAME_MS: u64 = 20;

/// Segmenting settings.
#[derive(Debug, Clone, Copy)]
pub struct SegmentRules {
    /// A pause at least this long, after speech, closes the segment.
    pub pause: Duration,
    /// A segment is closed at this length even without a pause.
    pub max_len: Duration,
    /// Frames quieter than this RMS (of 16-bit samples) are never speech (~ -40 dBFS).
    pub min_speech_rms: f64,
}

impl Default for SegmentRules {
    fn default() -> Self {
        SegmentRules {
            pause: Duration::from_millis(600),
            max_len: Duration::from_secs(15),
            min_speech_rms: 330.0,
        }
    }
}

/// Follows the audio of the open segment and says when to close it.
#[derive(Debug)]
pub struct Segmenter {
    rules: SegmentRules,
    sample_rate: u32,
    frame_samples: u64,
    /// Sum of squares and count of the samples of the frame being filled.
    frame_sum: f64,
    frame_len: u64,
    /// A byte left over from a chunk of odd length (the first half of a sample).
    odd_byte: Option<u8>,
    /// An estimate of the background level, learnt from quiet frames: it falls at once and rises
    /// gradually.
    noise_floor: f64,
    /// Samples in the open segment.
    segment_samples: u64,
    heard_speech: bool,
    silence_samples: u64,
}

impl Segmenter {
    pub fn new(rules: SegmentRules, sample_rate: u32) -> Segmenter {
        Segmenter {
            rules,
            sample_rate,
            frame_samples: (u64::from(sample_rate) * FRAME_MS / 1000).max(1),
            frame_sum: 0.0,
            frame_len: 0,
            odd_byte: None,
            noise_floor: rules.min_speech_rms / 3.0,
            segment_samples: 0,
            heard_speech: false,
            silence_samples: 0,
        }
    }

    /// Feeds a chunk of 16-bit little-endian mono PCM. Returns whether the open segment should
    /// be closed after this chunk.
    pub fn push(&mut self, pcm: &[u8]) -> bool {
        let mut bytes = pcm;
        // The left-over byte waits for the next byte, however many empty chunks come first.
        if let Some(low) = self.odd_byte
            && let Some((&high, rest)) = bytes.split_first()
        {
            self.odd_byte = None;
            self.sample(i16::from_le_bytes([low, high]));
            bytes = rest;
        }
        let mut pairs = bytes.chunks_exact(2);
        for pair in &mut pairs {
            self.sample(i16::from_le_bytes([pair[0], pair[1]]));
        }
        if let [last] = pairs.remainder() {
            self.odd_byte = Some(*last);
        }
        self.should_cut()
    }

    fn sample(&mut self, s: i16) {
        let v = f64::from(s);
        self.frame_sum += v * v;
        self.frame_len += 1;
        self.segment_samples += 1;
        if self.frame_len == self.frame_samples {
            let rms = (self.frame_sum / self.frame_len as f64).sqrt();
            self.frame(rms);
            self.frame_sum = 0.0;
            self.frame_len = 0;
        }
    }

    fn frame(&mut self, rms: f64) {
        let threshold = self.rules.min_speech_rms.max(self.noise_floor * 3.0);
        if rms >= threshold {
            // The floor learns from non-speech only: a loud, steady noise is at worst treated as
            // speech, which cuts at the maximum length, never mid-word.
            self.heard_speech = true;
            self.silence_samples = 0;
        } else {
            self.silence_samples += self.frame_samples;
            if rms < self.noise_floor {
                self.noise_floor = rms.max(1.0);
            } else {
                self.noise_floor += (rms - self.noise_floor) * 0.02;
            }
        }
    }

    fn should_cut(&self) -> bool {
        let ms = |samples: u64| samples * 1000 / u64::from(self.sample_rate);
        ms(self.segment_samples) >= self.rules.max_len.as_millis() as u64
            || (self.heard_speech
                && ms(self.silence_samples) >= self.rules.pause.as_millis() as u64)
    }

    /// Starts a new segment (after the open one was closed). The noise estimate is kept.
    pub fn reset(&mut self) {
        self.segment_samples = 0;
        self.heard_speech = false;
        self.silence_samples = 0;
    }
}

/// Milliseconds of 16-bit mono PCM in `bytes` bytes at `sample_rate`.
pub fn pcm_ms(bytes: u64, sample_rate: u32) -> u64 {
    bytes / 2 * 1000 / u64::from(sample_rate)
}

/// A WAV file (RIFF, PCM, 16-bit, mono) holding `pcm`.
pub fn wav(pcm: &[u8], sample_rate: u32) -> Vec<u8> {
    let data_len = pcm.len() as u32;
    let mut out = Vec::with_capacity(44 + pcm.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(pcm);
    out
}

/// The PCM inside a WAV file written by [`wav`] (its 44-byte header skipped), if it is one.
pub fn wav_pcm(wav: &[u8]) -> Option<&[u8]> {
    (wav.len() >= 44 && &wav[..4] == b"RIFF" && &wav[8..12] == b"WAVE" && &wav[36..40] == b"data")
        .then(|| &wav[44..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 16_000;

    /// `ms` of a 220 Hz tone at `amplitude`, as 16-bit little-endian PCM.
    fn tone(ms: u64, amplitude: f64) -> Vec<u8> {
        let n = u64::from(RATE) * ms / 1000;
        (0..n)
            .flat_map(|i| {
                let t = i as f64 / f64::from(RATE);
                let s = (amplitude * (2.0 * std::f64::consts::PI * 220.0 * t).sin()) as i16;
                s.to_le_bytes()
            })
            .collect()
    }

    fn feed(seg: &mut Segmenter, audio: &[u8], chunk_ms: u64) -> Vec<usize> {
        let chunk = (u64::from(RATE) * chunk_ms / 1000 * 2) as usize;
        let mut cuts = Vec::new();
        for (i, c) in audio.chunks(chunk).enumerate() {
            if seg.push(c) {
                cuts.push(i);
                seg.reset();
            }
        }
        cuts
    }

    #[test]
    fn a_pause_after_speech_closes_the_segment_and_a_short_one_does_not() {
        let mut seg = Segmenter::new(SegmentRules::default(), RATE);
        let mut audio = tone(1000, 8000.0);
        audio.extend(tone(300, 20.0)); // a breath: too short to cut
        audio.extend(tone(1000, 8000.0));
        audio.extend(tone(700, 20.0)); // a real pause
        audio.extend(tone(500, 8000.0));
        let cuts = feed(&mut seg, &audio, 100);
        // 100 ms chunks: speech 0-9, breath 10-12, speech 13-22, pause 23-29 (600 ms at 28).
        assert_eq!(cuts, vec![28]);
    }

    #[test]
    fn silence_alone_never_cuts_before_the_maximum_length() {
        let rules = SegmentRules {
            max_len: Duration::from_secs(2),
            ..SegmentRules::default()
        };
        let mut seg = Segmenter::new(rules, RATE);
        let cuts = feed(&mut seg, &tone(5000, 0.0), 100);
        assert_eq!(cuts, vec![19, 39]);
    }

    #[test]
    fn continuous_speech_is_cut_at_the_maximum_length() {
        let mut seg = Segmenter::new(SegmentRules::default(), RATE);
        let cuts = feed(&mut seg, &tone(40_000, 6000.0), 100);
        assert_eq!(cuts, vec![149, 299]);
    }

    #[test]
    fn odd_length_chunks_are_joined_sample_exactly() {
        let audio = tone(2000, 8000.0);
        let mut whole = Segmenter::new(SegmentRules::default(), RATE);
        whole.push(&audio);
        let mut pieces = Segmenter::new(SegmentRules::default(), RATE);
        for c in audio.chunks(333) {
            pieces.push(c);
        }
        assert_eq!(whole.segment_samples, pieces.segment_samples);
        assert_eq!(whole.noise_floor, pieces.noise_floor);
    }

    #[test]
    fn an_empty_chunk_keeps_the_odd_byte_before_it() {
        // Found by fuzzing (fuzz/corpus/audio_frame): an empty chunk after an odd-length one
        // dropped the left-over byte, shifting every later sample by one byte.
        let audio = tone(200, 8000.0);
        let mut whole = Segmenter::new(SegmentRules::default(), RATE);
        whole.push(&audio);
        let mut pieces = Segmenter::new(SegmentRules::default(), RATE);
        for c in audio.chunks(3) {
            pieces.push(c);
            pieces.push(&[]);
        }
        assert_eq!(whole.segment_samples, pieces.segment_samples);
        assert_eq!(whole.frame_sum, pieces.frame_sum);
        assert_eq!(whole.noise_floor, pieces.noise_floor);
        assert_eq!(whole.odd_byte, pieces.odd_byte);
    }

    #[test]
    fn wav_round_trips() {
        let pcm = tone(100, 1000.0);
        let file = wav(&pcm, RATE);
        assert_eq!(file.len(), 44 + pcm.len());
        assert_eq!(wav_pcm(&file), Some(&pcm[..]));
        assert_eq!(pcm_ms(pcm.len() as u64, RATE), 100);
    }
}

/// Property tests: for arbitrary audio cut into arbitrary chunks (odd and empty ones included),
/// the segmenter's decisions do not depend on the chunking, no segment stays open at the maximum
/// length, a segment is closed early only after speech and a long enough pause, a long enough
/// pause after speech does close it, and the segments concatenate to the audio.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;
    use crate::live::protocol::SAMPLE_RATES;

    /// One stretch of audio: silence, quiet noise, a loud tone ("speech") or raw bytes.
    #[derive(Debug, Clone)]
    enum Piece {
        Silence(usize),
        Quiet(usize),
        Speech(usize, i16),
        Raw(Vec<u8>),
    }

    fn piece() -> impl Strategy<Value = Piece> {
        prop_oneof![
            (1..3000usize).prop_map(Piece::Silence),
            (1..3000usize).prop_map(Piece::Quiet),
            (1..3000usize, 2000..i16::MAX).prop_map(|(n, a)| Piece::Speech(n, a)),
            proptest::collection::vec(any::<u8>(), 0..600).prop_map(Piece::Raw),
        ]
    }

    fn render(pieces: &[Piece], rate: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in pieces {
            let samples = |n: usize, amplitude: f64, hz: f64| -> Vec<u8> {
                (0..n)
                    .flat_map(|i| {
                        let t = i as f64 / f64::from(rate);
                        ((amplitude * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16)
                            .to_le_bytes()
                    })
                    .collect()
            };
            match piece {
                Piece::Silence(n) => out.extend(vec![0; n * 2]),
                Piece::Quiet(n) => out.extend(samples(*n, 20.0, 50.0)),
                Piece::Speech(n, a) => out.extend(samples(*n, f64::from(*a), 220.0)),
                Piece::Raw(bytes) => out.extend_from_slice(bytes),
            }
        }
        out
    }

    fn rules() -> impl Strategy<Value = SegmentRules> {
        (0..1500u64, 1..4000u64, 0..3000u32).prop_map(|(pause, max_len, rms)| SegmentRules {
            pause: Duration::from_millis(pause),
            max_len: Duration::from_millis(max_len),
            min_speech_rms: f64::from(rms),
        })
    }

    fn rate() -> impl Strategy<Value = u32> {
        proptest::sample::select(SAMPLE_RATES)
    }

    /// Chunk sizes, used in turn until the audio is spent (the trailing 1 ensures progress).
    fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(prop_oneof![Just(0usize), 1..8usize, 8..2000usize], 1..12)
            .prop_map(|mut sizes| {
                sizes.push(1);
                sizes
            })
    }

    fn chunks<'a>(audio: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at >= audio.len() {
                break;
            }
            let end = (at + size).min(audio.len());
            out.push(&audio[at..end]);
            at = end;
        }
        out
    }

    /// Everything the segmenter carries from one chunk to the next.
    fn state(s: &Segmenter) -> (u64, u64, u64, Option<u8>, u64, bool, u64) {
        (
            s.segment_samples,
            s.frame_len,
            s.frame_sum.to_bits(),
            s.odd_byte,
            s.noise_floor.to_bits(),
            s.heard_speech,
            s.silence_samples,
        )
    }

    fn ms(samples: u64, rate: u32) -> u64 {
        samples * 1000 / u64::from(rate)
    }

    proptest! {
        #[test]
        fn chunking_does_not_change_where_segments_close(
            pieces in proptest::collection::vec(piece(), 1..8),
            sizes in chunk_sizes(),
            rules in rules(),
            rate in rate(),
        ) {
            let audio = render(&pieces, rate);
            let mut chunked = Segmenter::new(rules, rate);
            let mut bytewise = Segmenter::new(rules, rate);
            for (i, chunk) in chunks(&audio, &sizes).into_iter().enumerate() {
                let cut = chunked.push(chunk);
                let mut reference = bytewise.should_cut();
                for &b in chunk {
                    reference = bytewise.push(&[b]);
                }
                prop_assert_eq!(cut, reference, "chunk {} of {} bytes", i, chunk.len());
                prop_assert_eq!(state(&chunked), state(&bytewise), "after chunk {}", i);
                if cut {
                    chunked.reset();
                    bytewise.reset();
                }
            }
        }

        #[test]
        fn segments_respect_the_maximum_and_the_pause_and_hold_all_the_audio(
            pieces in proptest::collection::vec(piece(), 1..8),
            sizes in chunk_sizes(),
            rules in rules(),
            rate in rate(),
        ) {
            let audio = render(&pieces, rate);
            let max_len = rules.max_len.as_millis() as u64;
            let pause = rules.pause.as_millis() as u64;
            let mut seg = Segmenter::new(rules, rate);
            let mut segments: Vec<Vec<u8>> = Vec::new();
            let mut open = Vec::new();
            for chunk in chunks(&audio, &sizes) {
                let before = seg.segment_samples;
                prop_assert!(ms(before, rate) < max_len, "a segment stayed open past the maximum");
                let cut = seg.push(chunk);
                open.extend_from_slice(chunk);
                let length = ms(seg.segment_samples, rate);
                if cut {
                    prop_assert!(
                        length >= max_len
                            || (seg.heard_speech && ms(seg.silence_samples, rate) >= pause),
                        "closed a {} ms segment early", length
                    );
                    segments.push(std::mem::take(&mut open));
                    seg.reset();
                } else {
                    prop_assert!(length < max_len, "a {} ms segment was not closed", length);
                }
            }
            segments.push(open);
            prop_assert_eq!(segments.concat(), audio);
        }

        #[test]
        fn a_long_enough_pause_after_speech_closes_the_segment(
            speech_frames in 2..40u64,
            amplitude in 2000..i16::MAX,
            pause_ms in 20..1500u64,
            extra in 0..5000usize,
            sizes in chunk_sizes(),
            rate in rate(),
        ) {
            let rules = SegmentRules {
                pause: Duration::from_millis(pause_ms),
                max_len: Duration::from_secs(3600),
                ..SegmentRules::default()
            };
            let frame = u64::from(rate) * FRAME_MS / 1000;
            let pause = (pause_ms * u64::from(rate)).div_ceil(1000);
            let speech = (speech_frames * frame) as usize;
            let silence = (pause + 2 * frame) as usize + extra;
            let audio = render(&[Piece::Speech(speech, amplitude), Piece::Silence(silence)], rate);
            let mut seg = Segmenter::new(rules, rate);
            let mut at = 0u64;
            let mut cut_at = None;
            for chunk in chunks(&audio, &sizes) {
                at += chunk.len() as u64;
                if seg.push(chunk) {
                    cut_at = Some(at / 2);
                    break;
                }
            }
            let cut_at = cut_at.expect("the pause closed the segment");
            let speech = speech as u64;
            prop_assert!(cut_at + frame >= speech + pause, "closed {} samples in", cut_at);
            // Closed at the first chunk boundary past the pause (and at most one frame of
            // alignment on each side of the speech).
            let latest = chunks(&audio, &sizes)
                .iter()
                .scan(0u64, |end, c| {
                    *end += c.len() as u64;
                    Some(*end / 2)
                })
                .find(|&end| end >= speech + pause + 2 * frame)
                .expect("the audio is that long");
            prop_assert!(cut_at <= latest, "closed at {} samples, not by {}", cut_at, latest);
        }

        #[test]
        fn silence_alone_closes_segments_exactly_at_the_maximum_length(
            samples in 1..40_000usize,
            max_ms in 1..2000u64,
            sizes in chunk_sizes(),
            rate in rate(),
        ) {
            let rules = SegmentRules {
                max_len: Duration::from_millis(max_ms),
                ..SegmentRules::default()
            };
            let audio = render(&[Piece::Silence(samples)], rate);
            let mut seg = Segmenter::new(rules, rate);
            let (mut total, mut start) = (0u64, 0u64);
            for chunk in chunks(&audio, &sizes) {
                total += chunk.len() as u64;
                let length = ms(total / 2 - start / 2, rate);
                prop_assert_eq!(seg.push(chunk), length >= max_ms);
                if length >= max_ms {
                    seg.reset();
                    start = total;
                }
            }
        }

        #[test]
        fn wav_files_hold_exactly_their_pcm(
            pcm in proptest::collection::vec(any::<u8>(), 0..3000),
            rate in rate(),
        ) {
            let file = wav(&pcm, rate);
            prop_assert_eq!(wav_pcm(&file), Some(&pcm[..]));
            prop_assert_eq!(crate::live::sniff::sniff(&file), Some(teachback_events::AudioFormat::Wav));
        }
    }
}
