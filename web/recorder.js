// TeachBack: microphone capture and the live-lecture session.
//
// `Microphone` turns the microphone into 100 ms chunks of 16 kHz PCM (see pcm-worklet.js).
// `LiveSession` streams a lecture over the live WebSocket (docs/protocol.md): it numbers the
// chunks, keeps each one until an `ack` covers it, and when the connection drops it reconnects
// with backoff, resumes the lecture and resends what the server does not have. Once the
// lecture is finished it follows the grade over Server-Sent Events if the socket is gone.
// Neither class touches the DOM: the page listens to the session's events.

export const SAMPLE_RATE = 16000;
const SEQ_BYTES = 8;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 5000;
const PING_EVERY_MS = 10000;
// With acks every few hundred ms while recording and pongs otherwise, this much silence means
// the network is gone even if the browser has not noticed yet.
const SILENCE_LIMIT_MS = 30000;
const COMMAND_TIMEOUT_MS = 1000;

export class Microphone {
  /** @param {(pcm: ArrayBuffer, level: number) => void} onChunk */
  constructor(onChunk) {
    this.onChunk = onChunk;
    this.replies = new Map();
    this.nextId = 1;
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    try {
      this.ctx = new AudioContext();
      await this.ctx.audioWorklet.addModule('/pcm-worklet.js');
      const source = this.ctx.createMediaStreamSource(this.stream);
      // One explicit channel: the node down-mixes a stereo microphone to mono.
      this.node = new AudioWorkletNode(this.ctx, 'pcm16-capture', {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        channelCount: 1,
        channelCountMode: 'explicit',
        channelInterpretation: 'speakers',
      });
      this.node.port.onmessage = (event) => this.message(event.data);
      source.connect(this.node);
      // Connected to the output (it writes silence) so every browser keeps pulling it.
      this.node.connect(this.ctx.destination);
      if (this.ctx.state === 'suspended') await this.ctx.resume();
    } catch (err) {
      this.release();
      throw err;
    }
  }

  message(data) {
    if (data.type === 'chunk') {
      this.onChunk(data.pcm, data.level);
    } else if (data.type === 'done') {
      const resolve = this.replies.get(data.id);
      this.replies.delete(data.id);
      if (resolve) resolve();
    }
  }

  // Resolves once the worklet has handled the command and every chunk before it has arrived.
  command(type) {
    if (!this.node) return Promise.resolve();
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.replies.set(id, resolve);
      this.node.port.postMessage({ type, id });
      setTimeout(() => {
        if (this.replies.delete(id)) resolve();
      }, COMMAND_TIMEOUT_MS);
    });
  }

  /** Posts the partial chunk, then drops the input until `resume`. */
  pause() {
    return this.command('pause');
  }

  resume() {
    return this.command('resume');
  }

  /** Delivers every captured sample, then releases the microphone. */
  async stop() {
    if (!this.node) return;
    await this.command('flush');
    this.release();
  }

  release() {
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    if (this.ctx && this.ctx.state !== 'closed') this.ctx.close().catch(() => {});
    this.stream = null;
    this.ctx = null;
    this.node = null;
  }
}

/** Frames after which nothing more follows for the lecture (see the protocol's `is_final`). */
function isFinal(frame) {
  return (
    frame.type === 'graded' ||
    frame.type === 'gradingFailed' ||
    (frame.type === 'transcriptCompleted' && frame.empty) ||
    (frame.type === 'state' && (frame.state === 'cancelled' || frame.state === 'abandoned'))
  );
}

// Errors after which the attempt to start a lecture is over.
const START_REFUSALS = new Set([
  'unknown_topic', 'unsupported_format', 'invalid_language', 'invalid_text',
  'lecture_in_progress', 'too_many_live_lectures',
]);

/**
 * One lecture over the live WebSocket. Events passed to `onEvent`:
 * - {type: 'frame', frame}: a server frame (from the socket, or from the event stream).
 * - {type: 'connection', state}: 'connecting' | 'open' | 'reconnecting' | 'closed'.
 * - {type: 'error', code, message, fatal}: a refusal worth showing.
 * - {type: 'replay'}: frames of the lecture follow again from the start (event stream).
 * - {type: 'ended'}: the event stream ended without a final frame.
 * - {type: 'progress'}: chunks were produced, sent or acknowledged.
 */
export class LiveSession {
  /**
   * @param {{getToken: () => Promise<string>, onEvent: (event: object) => void}} options
   */
  constructor({ getToken, onEvent }) {
    this.getToken = getToken;
    this.onEvent = onEvent;
    this.request = null; // the `start` or `text` message
    this.lectureId = null;
    // 'starting' → 'live' → 'processing' (finished, grade to come) → 'done'.
    this.phase = 'starting';
    this.localPaused = false;
    this.ending = null; // 'finish' or 'cancel' once the learner asked for it
    this.pending = []; // {seq, frame: ArrayBuffer} not yet acknowledged, in order
    this.nextSeq = 1;
    this.sentSeq = 0; // last seq sent on the current connection
    this.maxSentSeq = 0; // last seq ever sent (counts each chunk once)
    this.ackedSeq = 0;
    this.gapMark = 0; // the expectedSeq of the last `sequence_gap` being answered
    this.bytesSent = 0;
    this.chunks = 0;
    this.samples = 0;
    this.reconnects = 0;
    this.hellos = 0;
    this.maxLectureSecs = Infinity;
    this.graceMs = 120000;
    this.connection = 'connecting';
    this.ws = null;
    this.ready = false; // the current socket has started or resumed the lecture
    this.sse = null;
    this.sseVersion = -1;
    this.backoff = BACKOFF_FIRST_MS;
    this.retryTimer = null;
    this.lostSince = null;
    this.lastHeard = 0;
    this.closed = false;
    this.watchdog = setInterval(() => this.checkAlive(), PING_EVERY_MS);
  }

  startAudio({ topicId, language }) {
    this.request = { type: 'start', topicId, format: 'pcm_s16le', sampleRate: SAMPLE_RATE, language };
    this.connect();
  }

  startText({ topicId, text, language }) {
    this.request = { type: 'text', topicId, text, language };
    this.connect();
  }

  /** Recorded seconds of audio produced so far (the lecture's clock). */
  seconds() {
    return this.samples / SAMPLE_RATE;
  }

  stats() {
    return {
      lectureId: this.lectureId,
      bytesSent: this.bytesSent,
      chunks: this.chunks,
      ackedSeq: this.ackedSeq,
      reconnects: this.reconnects,
      connection: this.connection,
    };
  }

  // ---- Audio -------------------------------------------------------------------------------

  /** A chunk of PCM from the microphone: numbered, kept until acknowledged, sent when possible. */
  pushChunk(pcm) {
    if (this.localPaused || this.ending) return;
    if (this.phase !== 'starting' && this.phase !== 'live') return;
    const room = this.maxLectureSecs * SAMPLE_RATE - this.samples;
    if (room <= 0) return; // the server finishes the lecture at its limit
    if (pcm.byteLength / 2 > room) pcm = pcm.slice(0, room * 2);
    const seq = this.nextSeq++;
    const frame = new Uint8Array(SEQ_BYTES + pcm.byteLength);
    new DataView(frame.buffer).setBigUint64(0, BigInt(seq), false);
    frame.set(new Uint8Array(pcm), SEQ_BYTES);
    this.pending.push({ seq, frame: frame.buffer });
    this.samples += pcm.byteLength / 2;
    this.flushPending();
    this.emit({ type: 'progress' });
  }

  // Sends, in order, every kept chunk after the last one sent on this connection.
  flushPending() {
    if (!this.canSend()) return;
    for (const chunk of this.pending) {
      if (chunk.seq <= this.sentSeq) continue;
      this.ws.send(chunk.frame);
      this.sentSeq = chunk.seq;
      if (chunk.seq > this.maxSentSeq) {
        this.maxSentSeq = chunk.seq;
        this.chunks += 1;
        this.bytesSent += chunk.frame.byteLength - SEQ_BYTES;
      }
    }
  }

  canSend() {
    return this.ready && this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  resendFrom(seq) {
    this.sentSeq = Math.min(this.sentSeq, seq - 1);
    this.flushPending();
  }

  // ---- Commands ----------------------------------------------------------------------------

  pause() {
    this.localPaused = true;
    this.sendJson({ type: 'pause' });
  }

  resume() {
    this.localPaused = false;
    this.sendJson({ type: 'resume' });
  }

  /** Call after the microphone delivered its last chunk: `finish` follows every chunk. */
  finish() {
    this.ending = 'finish';
    this.sendJson({ type: 'finish' });
  }

  /** Returns false when the socket is down (the caller cancels over HTTP instead). */
  cancel() {
    this.ending = 'cancel';
    return this.sendJson({ type: 'cancel' });
  }

  sendJson(message) {
    if (!this.canSend()) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  /** Test hook: lose the connection abruptly, as a network drop would. */
  dropConnection() {
    if (this.ws) this.lost(this.ws);
  }

  /** Stops everything (leaving the page). A live lecture waits on the server for a reconnect. */
  close() {
    this.closed = true;
    clearInterval(this.watchdog);
    clearTimeout(this.retryTimer);
    this.detach(this.ws, 1000);
    this.ws = null;
    if (this.sse) this.sse.close();
    this.sse = null;
    this.setConnection('closed');
  }

  // ---- Connection --------------------------------------------------------------------------

  async connect() {
    this.retryTimer = null;
    if (this.closed) return;
    this.setConnection(this.hellos === 0 ? 'connecting' : 'reconnecting');
    let token;
    try {
      token = await this.getToken();
    } catch {
      this.retry();
      return;
    }
    if (this.closed) return;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${scheme}://${location.host}/api/v1/live?token=${encodeURIComponent(token)}`);
    ws.binaryType = 'arraybuffer';
    ws.onmessage = (event) => {
      if (typeof event.data === 'string') this.frame(ws, JSON.parse(event.data));
    };
    ws.onclose = () => this.lost(ws);
    this.ws = ws;
    this.ready = false;
    this.lastHeard = Date.now();
  }

  detach(ws, code) {
    if (!ws) return;
    ws.onmessage = null;
    ws.onclose = null;
    try {
      ws.close(code);
    } catch {
      // Already closing.
    }
  }

  // The socket is gone (closed by either side, or dropped): decide how to go on.
  lost(ws) {
    if (ws !== this.ws) return;
    // 4000: an application code; the browser refuses to send 1006 itself.
    this.detach(ws, 4000);
    this.ws = null;
    this.ready = false;
    if (this.closed || this.phase === 'done') {
      this.setConnection('closed');
    } else if (this.phase === 'processing') {
      this.follow();
    } else {
      if (this.lostSince === null) this.lostSince = Date.now();
      this.retry();
    }
  }

  retry() {
    if (this.closed || this.retryTimer) return;
    if (this.lostSince !== null && Date.now() - this.lostSince > this.graceMs) {
      // The server has abandoned the lecture by now: stop trying.
      this.phase = 'done';
      this.setConnection('closed');
      this.emit({ type: 'error', code: 'connection_lost', fatal: true });
      return;
    }
    this.setConnection('reconnecting');
    this.retryTimer = setTimeout(() => this.connect(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
  }

  checkAlive() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - this.lastHeard > SILENCE_LIMIT_MS) {
      this.lost(this.ws);
    } else {
      this.ws.send(JSON.stringify({ type: 'ping' }));
    }
  }

  setConnection(state) {
    if (this.connection === state) return;
    this.connection = state;
    this.emit({ type: 'connection', state });
  }

  emit(event) {
    this.onEvent(event);
  }

  // ---- Frames from the socket --------------------------------------------------------------

  frame(ws, frame) {
    if (ws !== this.ws) return;
    this.lastHeard = Date.now();
    switch (frame.type) {
      case 'hello':
        return this.hello(frame);
      case 'started':
        this.lectureId = frame.lectureId;
        this.ready = true;
        this.phase = frame.format === 'text' ? 'processing' : 'live';
        this.emit({ type: 'frame', frame });
        if (this.phase === 'live') this.sync('recording');
        return;
      case 'reconnected':
        this.reconnected(frame);
        return;
      case 'ack':
        this.ack(frame.seq);
        return;
      case 'error':
        this.error(frame);
        return;
      case 'pong':
        return;
      default:
        this.lectureFrame(frame);
    }
  }

  hello(frame) {
    this.hellos += 1;
    if (this.hellos > 1) this.reconnects += 1;
    this.maxLectureSecs = frame.maxLectureSecs || Infinity;
    if (frame.resumeGraceSecs) this.graceMs = frame.resumeGraceSecs * 1000;
    this.backoff = BACKOFF_FIRST_MS;
    this.lostSince = null;
    this.setConnection('open');
    if (this.lectureId && this.phase === 'live') {
      this.ws.send(JSON.stringify({ type: 'reconnect', lectureId: this.lectureId }));
    } else if (!this.lectureId && this.request) {
      this.ws.send(JSON.stringify(this.request));
    }
  }

  reconnected(frame) {
    this.ready = true;
    this.ack(frame.lastSeq);
    this.sentSeq = frame.lastSeq;
    this.emit({ type: 'frame', frame });
    this.sync(frame.state);
  }

  // Brings a (re)attached lecture in line with what happened here: resend what the server
  // lacks, and replay a pause, resume, finish or cancel the learner asked for while it was away.
  sync(serverState) {
    if (serverState === 'finished') {
      this.phase = 'processing';
      return;
    }
    let paused = serverState === 'paused';
    const unsent = this.pending.some((chunk) => chunk.seq > this.sentSeq);
    if (paused && (unsent || !this.localPaused)) {
      this.sendJson({ type: 'resume' });
      paused = false;
    }
    this.flushPending();
    if (!paused && this.localPaused) this.sendJson({ type: 'pause' });
    if (this.ending) this.sendJson({ type: this.ending });
    this.emit({ type: 'progress' });
  }

  ack(seq) {
    if (seq > this.ackedSeq) this.ackedSeq = seq;
    while (this.pending.length && this.pending[0].seq <= seq) this.pending.shift();
    if (seq >= this.gapMark) this.gapMark = 0;
    this.emit({ type: 'progress' });
  }

  error(frame) {
    const { code } = frame;
    if (code === 'sequence_gap' || code === 'lecture_paused') {
      const expected = frame.expectedSeq || this.ackedSeq + 1;
      // Chunks sent after the refused one are refused too; answer the first refusal only.
      if (expected === this.gapMark) return;
      this.gapMark = expected;
      if (code === 'lecture_paused' && !this.localPaused) this.sendJson({ type: 'resume' });
      this.resendFrom(expected);
      return;
    }
    if (code === 'invalid_state' || code === 'lecture_finished') return; // races with our own state
    if (code === 'lecture_not_live' && this.lectureId) {
      // The lecture ended while we were away: read how it ended from its event stream.
      this.phase = 'processing';
      this.detach(this.ws, 1000);
      this.ws = null;
      this.follow();
      return;
    }
    if (!this.lectureId && START_REFUSALS.has(code)) {
      this.phase = 'done';
      this.detach(this.ws, 1000);
      this.ws = null;
      this.setConnection('closed');
    }
    if (code === 'superseded') {
      // Another tab or device took the lecture over: it is no longer ours to send.
      this.phase = 'done';
    }
    this.emit({ type: 'error', code, message: frame.message, fatal: frame.fatal || this.phase === 'done' });
  }

  // A frame about the lecture itself, from the socket or the event stream.
  lectureFrame(frame) {
    if (frame.type === 'state' && frame.state === 'finished' && this.phase !== 'done') {
      this.phase = 'processing';
    }
    this.emit({ type: 'frame', frame });
    if (isFinal(frame)) this.done();
  }

  done() {
    this.phase = 'done';
    clearTimeout(this.retryTimer);
    this.detach(this.ws, 1000);
    this.ws = null;
    if (this.sse) this.sse.close();
    this.sse = null;
    this.setConnection('closed');
  }

  // ---- After the socket: the lecture's event stream ----------------------------------------

  /** Follows the rest of a finished lecture over Server-Sent Events. */
  async follow() {
    if (this.closed || this.sse || this.phase === 'done' || !this.lectureId) return;
    this.setConnection('reconnecting');
    let token;
    try {
      token = await this.getToken();
    } catch {
      setTimeout(() => this.follow(), this.backoff);
      return;
    }
    if (this.closed || this.sse || this.phase === 'done') return;
    const url = `/api/v1/lectures/${encodeURIComponent(this.lectureId)}/events?token=${encodeURIComponent(token)}`;
    const sse = new EventSource(url);
    this.sse = sse;
    // The stream replays the lecture from its start: the page rebuilds what it shows.
    if (this.sseVersion < 0) this.emit({ type: 'replay' });
    sse.onopen = () => {
      this.backoff = BACKOFF_FIRST_MS;
      this.setConnection('open');
    };
    sse.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (typeof frame.version === 'number' && frame.type !== 'caughtUp') {
        if (frame.version <= this.sseVersion) return;
        this.sseVersion = frame.version;
      }
      if (frame.type === 'caughtUp') return;
      this.lectureFrame(frame);
    };
    sse.addEventListener('end', () => {
      if (this.phase === 'done') return;
      this.done();
      this.emit({ type: 'ended' });
    });
    sse.onerror = () => {
      if (sse.readyState !== EventSource.CLOSED) {
        this.setConnection('reconnecting');
        return;
      }
      // Refused (an expired token, say): open a new stream with a fresh token.
      sse.close();
      if (this.sse !== sse) return;
      this.sse = null;
      this.setConnection('reconnecting');
      setTimeout(() => this.follow(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    };
  }
}
