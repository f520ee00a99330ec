//! Recording bytes: the WAV reader `wav_pcm` (segments read back), the WAV writer `wav`, and the
//! container sniffing `teachback::live::sniff::sniff` for uploaded recordings.
//!
//! Properties: no panic; `wav_pcm` accepts only RIFF/WAVE files with a `data` chunk at offset 36
//! and returns exactly the bytes after the 44-byte header; `wav` of any PCM reads back to that
//! PCM, carries correct RIFF and data sizes, and sniffs as WAV; `sniff` depends only on the first
//! `SNIFF_LEN` bytes, never names a format that cannot be uploaded, and agrees with `wav_pcm`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teachback::live::protocol::SAMPLE_RATES;
use teachback::live::segment::{wav, wav_pcm};
use teachback::live::sniff::{SNIFF_LEN, sniff};
use teachback_events::AudioFormat;

fuzz_target!(|data: &[u8]| {
    // Arbitrary bytes as a stored segment or an uploaded recording.
    if let Some(pcm) = wav_pcm(data) {
        assert!(data.len() >= 44);
        assert_eq!(&data[..4], b"RIFF");
        assert_eq!(&data[8..12], b"WAVE");
        assert_eq!(&data[36..40], b"data");
        assert_eq!(pcm, &data[44..]);
        assert_eq!(sniff(data), Some(AudioFormat::Wav));
    }

    let sniffed = sniff(data);
    if let Some(format) = sniffed {
        assert!(
            AudioFormat::ALL.contains(&format) && !format.is_pcm(),
            "{format:?}"
        );
    }
    let head = &data[..data.len().min(SNIFF_LEN)];
    assert_eq!(
        sniff(head),
        sniffed,
        "sniff read past its first {SNIFF_LEN} bytes"
    );
    let mut longer = data.to_vec();
    longer.extend_from_slice(b"RIFF\0\0\0\0WAVEOggS\x1A\x45\xDF\xA3");
    if data.len() >= SNIFF_LEN {
        assert_eq!(sniff(&longer), sniffed);
    }

    // The same bytes as PCM written into a WAV file.
    let rate = SAMPLE_RATES[data.first().map_or(0, |b| usize::from(*b)) % SAMPLE_RATES.len()];
    let file = wav(data, rate);
    assert_eq!(file.len(), 44 + data.len());
    assert_eq!(wav_pcm(&file), Some(data));
    assert_eq!(
        u32::from_le_bytes(file[4..8].try_into().unwrap()) as usize,
        file.len() - 8
    );
    assert_eq!(
        u32::from_le_bytes(file[40..44].try_into().unwrap()) as usize,
        data.len()
    );
    assert_eq!(u32::from_le_bytes(file[24..28].try_into().unwrap()), rate);
    assert_eq!(sniff(&file), Some(AudioFormat::Wav));
});
