// TeachBack: the microphone's AudioWorkletProcessor. It turns the context's audio (any sample
// rate, mono after the node's down-mix) into 16 kHz 16-bit little-endian PCM and posts it to
// the main thread in 100 ms chunks (1600 samples, 3200 bytes) with the chunk's RMS level.
//
// Messages from the main thread: {type: 'pause' | 'resume' | 'flush', id}. `pause` and `flush`
// first post the partial chunk (so nothing captured before them is lost), and every command is
// answered with {type: 'done', id} after the chunks it produced, so the main thread knows that
// all audio up to the command has arrived.

const OUTPUT_RATE = 16000;
const CHUNK_SAMPLES = 1600;
// The anti-aliasing low-pass, run at the input rate before decimating: a windowed sinc.
const CUTOFF_HZ = 7000; // below the output's 8 kHz Nyquist frequency, above speech's formants
const TAPS = 48; // at 48 kHz; more at higher rates, so that the transition band stays as narrow

/**
 * A linear-phase low-pass FIR: `taps` coefficients of a sinc cut off at `cutoff` (a fraction of
 * the sample rate), shaped by a Blackman window (stopband below about -74 dB) and normalised
 * to unity gain at DC.
 */
function lowPass(taps, cutoff) {
  const h = new Float64Array(taps);
  const mid = (taps - 1) / 2;
  let sum = 0;
  for (let n = 0; n < taps; n++) {
    const x = n - mid;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const phase = (2 * Math.PI * n) / (taps - 1);
    const window = 0.42 - 0.5 * Math.cos(phase) + 0.08 * Math.cos(2 * phase);
    h[n] = sinc * window;
    sum += h[n];
  }
  for (let n = 0; n < taps; n++) h[n] /= sum;
  return h;
}

class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    // At 16 kHz already, samples pass through untouched.
    this.passThrough = sampleRate === OUTPUT_RATE;
    const n = Math.max(TAPS, Math.round((TAPS * sampleRate) / 48000));
    // The cutoff stays below the input's own Nyquist frequency for rates under 16 kHz.
    this.taps = lowPass(n, Math.min(CUTOFF_HZ, 0.45 * sampleRate) / sampleRate);
    // The last n input samples, written twice (at i and i + n) so that the window starting at
    // `pos` is always contiguous. Kept across render quanta.
    this.history = new Float64Array(2 * n);
    this.paused = false;
    this.resetFilter();
    this.newChunk();
    this.port.onmessage = (event) => this.command(event.data);
  }

  newChunk() {
    this.chunk = new DataView(new ArrayBuffer(CHUNK_SAMPLES * 2));
    this.filled = 0;
    this.sumSquares = 0;
  }

  command({ type, id }) {
    if (type === 'pause') {
      this.post();
      this.paused = true;
      this.resetFilter();
    } else if (type === 'resume') {
      this.paused = false;
    } else if (type === 'flush') {
      this.post();
    }
    this.port.postMessage({ type: 'done', id });
  }

  resetFilter() {
    this.history.fill(0);
    this.pos = 0;
    this.prev = 0; // the filtered sample before the current one
    // Decimation clock, in integer units so that the count of output samples is exact: each
    // input sample adds OUTPUT_RATE; an output sample is due each time it reaches sampleRate.
    this.clock = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel || this.paused) return true;
    if (this.passThrough) {
      for (let i = 0; i < channel.length; i++) this.emit(channel[i]);
    } else {
      for (let i = 0; i < channel.length; i++) this.take(channel[i]);
    }
    return true;
  }

  // One input sample: low-pass it, then emit the output samples due since the previous one,
  // each linearly interpolated between the two filtered samples around its instant.
  take(x) {
    const y = this.filter(x);
    this.clock += OUTPUT_RATE;
    while (this.clock >= sampleRate) {
      this.clock -= sampleRate;
      // Where the output instant falls between the previous filtered sample (0) and this one (1).
      const frac = 1 - this.clock / OUTPUT_RATE;
      this.emit(this.prev + (y - this.prev) * frac);
    }
    this.prev = y;
  }

  filter(x) {
    const { history, taps } = this;
    const n = taps.length;
    history[this.pos] = x;
    history[this.pos + n] = x;
    this.pos = (this.pos + 1) % n;
    // history[pos .. pos + n) holds the last n samples, oldest first; the taps are symmetric,
    // so the order of the product does not matter.
    let y = 0;
    for (let k = 0; k < n; k++) y += taps[k] * history[this.pos + k];
    return y;
  }

  emit(value) {
    const v = Math.max(-1, Math.min(1, value));
    const sample = Math.max(-32768, Math.min(32767, Math.round(v * 32768)));
    this.chunk.setInt16(this.filled * 2, sample, true);
    this.sumSquares += v * v;
    this.filled += 1;
    if (this.filled === CHUNK_SAMPLES) this.post();
  }

  // Posts the samples gathered so far (a whole chunk, or the partial one on pause/flush).
  post() {
    if (this.filled === 0) return;
    const bytes = this.filled * 2;
    const pcm = bytes === this.chunk.byteLength ? this.chunk.buffer : this.chunk.buffer.slice(0, bytes);
    const level = Math.sqrt(this.sumSquares / this.filled);
    this.port.postMessage({ type: 'chunk', pcm, level }, [pcm]);
    this.newChunk();
  }
}

registerProcessor('pcm16-capture', Pcm16Capture);
