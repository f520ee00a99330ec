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
        if let Some(low) = self.odd_byte.take()
            && let Some((&high, rest)) = bytes.split_first()
        {
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
    fn wav_round_trips() {
        let pcm = tone(100, 1000.0);
        let file = wav(&pcm, RATE);
        assert_eq!(file.len(), 44 + pcm.len());
        assert_eq!(wav_pcm(&file), Some(&pcm[..]));
        assert_eq!(pcm_ms(pcm.len() as u64, RATE), 100);
    }
}
