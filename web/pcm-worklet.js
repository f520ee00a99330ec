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

class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    // Input samples per output sample (3 at 48 kHz, 2.75625 at 44.1 kHz).
    this.step = sampleRate / OUTPUT_RATE;
    // The output sample being built: the weighted sum of its input span so far, and how much
    // of the span (in input samples, fractional) is still to come. Kept across render quanta.
    this.acc = 0;
    this.need = this.step;
    this.paused = false;
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
    this.acc = 0;
    this.need = this.step;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel || this.paused) return true;
    for (let i = 0; i < channel.length; i++) this.take(channel[i]);
    return true;
  }

  // Box-filter resampling: each output sample is the mean of the input over its span, with
  // the samples at either edge weighted by the fraction inside it. The box is a low-pass that
  // keeps most aliasing out of speech; for rates below 16 kHz it degrades to sample-and-hold.
  take(x) {
    let left = 1;
    while (left > 1e-9) {
      const part = Math.min(left, this.need);
      this.acc += x * part;
      this.need -= part;
      left -= part;
      if (this.need <= 1e-9) {
        this.emit(this.acc / this.step);
        this.acc = 0;
        this.need += this.step;
      }
    }
  }

  emit(value) {
    const v = Math.max(-1, Math.min(1, value));
    this.chunk.setInt16(this.filled * 2, v < 0 ? v * 0x8000 : v * 0x7fff, true);
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
