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
// A socket still handshaking after this long is treated as lost (a black-holed network).
const CONNECT_TIMEOUT_MS = 10000;
// Leaving the page: how long the session stays on to end the lecture before it gives up.
const LEAVE_TIMEOUT_MS = 15000;

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
   * @param {{getToken: (options?: {force?: boolean}) => Promise<string>, onEvent: (event: object) => void}} options
   *   `getToken({force: true})` must refresh the access token even if it looks valid locally.
   */
  constructor({ getToken, onEvent }) {
    this.getToken = getToken;
    this.onEvent = onEvent;
    this.request = null; // the `start` or `text` message
    this.requestsSent = 0; // how many times the request was sent
    this.requestOpen = false; // the request on the current socket is not answered yet
    this.startInDoubt = false; // a `start` went out on a socket lost before it was answered
    this.staleCancelled = false; // a leftover live lecture was cancelled to make room (once only)
    this.lectureId = null;
    // 'starting' → 'live' → 'processing' (finished, grade to come) → 'done'.
    this.phase = 'starting';
    this.localPaused = false;
    this.ending = null; // 'finish' or 'cancel' once the learner asked for it
    this.leaving = false; // the page is gone: close once the lecture is ended (see leave())
    this.leaveTimer = null;
    this.finishTimer = null; // retries a `finish` the server could not store
    this.finishBackoff = BACKOFF_FIRST_MS;
    this.pending = []; // {seq, frame: ArrayBuffer} not yet acknowledged, in order
    this.nextSeq = 1;
    this.sentSeq = 0; // last seq sent on the current connection
    this.maxSentSeq = 0; // last seq ever sent (counts each chunk once)
    this.ackedSeq = 0;
    this.gapMark = 0; // the expectedSeq of the last `sequence_gap` being answered
    this.gapPing = null; // the nonce of the ping sent after that resend
    this.pings = 0;
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
    this.helloSeen = false; // the current socket got its `hello`
    this.connectStartedAt = 0;
    this.forceToken = false; // refresh the access token before the next attempt
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

  /** Whether the lecture is being started or recorded (not yet finished, cancelled or over). */
  recording() {
    return this.phase === 'starting' || this.phase === 'live';
  }

  // ---- Audio -------------------------------------------------------------------------------

  /** A chunk of PCM from the microphone: numbered, kept until acknowledged, sent when possible. */
  pushChunk(pcm) {
    if (this.localPaused || this.ending) return;
    if (!this.recording()) return;
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
    if (this.ending) return; // already finishing (or cancelling): `sync` replays it if needed
    this.ending = 'finish';
    this.sendJson({ type: 'finish' });
  }

  /**
   * Asks the server to cancel the lecture. Answers
   * - 'sent': a `state` frame follows;
   * - 'queued': the `start` is in flight, `cancel` follows once the lecture exists;
   * - 'none': nothing was started on the server, the session is over;
   * - 'offline': the socket is down; the caller cancels over HTTP instead.
   */
  cancel() {
    this.ending = 'cancel';
    clearTimeout(this.finishTimer);
    if (this.sendJson({ type: 'cancel' })) return 'sent';
    if (this.lectureId) return 'offline';
    if (this.requestsSent === 0) {
      this.done();
      return 'none';
    }
    return 'queued';
  }

  /**
   * Leaving the page (call after the microphone delivered its last chunk). A lecture being
   * started or recorded is ended first, so that it does not wait on the server for the grace
   * period: finished if audio was recorded (the recording is kept and graded), otherwise
   * cancelled. The session closes once the server has ended it, or after LEAVE_TIMEOUT_MS.
   */
  leave() {
    if (this.closed || !this.recording() || !this.request || this.request.type !== 'start') {
      this.close();
      return;
    }
    this.leaving = true;
    if (!this.ending) {
      this.ending = this.samples > 0 ? 'finish' : 'cancel';
      // Nothing was sent yet, so nothing exists on the server to cancel.
      if (this.ending === 'cancel' && !this.lectureId && this.requestsSent === 0) {
        this.close();
        return;
      }
      // Otherwise it follows `started` or `reconnected` (see sync()).
      this.sendJson({ type: this.ending });
    }
    this.leaveTimer = setTimeout(() => this.leaveOverHttp(), LEAVE_TIMEOUT_MS);
  }

  // The socket could not end the lecture in time: ask over HTTP, which also ends a live
  // lecture waiting for a reconnect, then stop.
  leaveOverHttp() {
    const { lectureId, ending } = this;
    this.close();
    if (!lectureId) return;
    this.endOverHttp(lectureId, ending)
      .then((ok) => ok || ending !== 'finish' || this.endOverHttp(lectureId, 'cancel'))
      .catch(() => {});
  }

  /** POST /api/v1/lectures/{id}/{action}; answers whether the server agreed. */
  async endOverHttp(lectureId, action) {
    const token = await this.getToken();
    const res = await fetch(`/api/v1/lectures/${encodeURIComponent(lectureId)}/${action}`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}` },
      keepalive: true, // still sent if the page unloads
    });
    return res.ok;
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

  /** Stops everything at once. A live lecture waits on the server for a reconnect (see leave()). */
  close() {
    this.closed = true;
    clearInterval(this.watchdog);
    clearTimeout(this.retryTimer);
    clearTimeout(this.leaveTimer);
    clearTimeout(this.finishTimer);
    this.detach(this.ws, 1000);
    this.ws = null;
    if (this.sse) this.sse.close();
    this.sse = null;
    this.setConnection('closed');
  }

  // ---- Connection --------------------------------------------------------------------------

  /** Closed, or nothing more to do: no new socket or stream may be opened. */
  stopped() {
    return this.closed || this.phase === 'done';
  }

  // A fresh access token when the last attempt may have been refused for its token.
  async token() {
    const force = this.forceToken;
    const token = await this.getToken({ force });
    if (force) this.forceToken = false;
    return token;
  }

  async connect() {
    this.retryTimer = null;
    if (this.stopped()) return;
    this.setConnection(this.hellos === 0 ? 'connecting' : 'reconnecting');
    let token;
    try {
      token = await this.token();
    } catch {
      this.retry();
      return;
    }
    if (this.stopped()) return; // closed or done while waiting for the token
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${scheme}://${location.host}/api/v1/live?token=${encodeURIComponent(token)}`);
    ws.binaryType = 'arraybuffer';
    ws.onmessage = (event) => {
      if (typeof event.data === 'string') this.frame(ws, JSON.parse(event.data));
    };
    ws.onclose = () => this.lost(ws);
    this.ws = ws;
    this.ready = false;
    this.helloSeen = false;
    this.connectStartedAt = Date.now();
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
    // Closed before `hello`: the server may have refused the token (401 before the upgrade)
    // although our clock thinks it valid (clock skew, a rotated secret).
    if (!this.helloSeen) this.forceToken = true;
    // The server may have created the lecture without our hearing of it.
    if (this.requestOpen) this.startInDoubt = true;
    this.requestOpen = false;
    if (this.closed || this.phase === 'done') {
      this.setConnection('closed');
    } else if (this.phase === 'processing') {
      this.follow();
    } else {
      this.retry();
    }
  }

  retry() {
    if (this.stopped() || this.retryTimer) return;
    if (this.lostSince === null) this.lostSince = Date.now();
    if (Date.now() - this.lostSince > this.graceMs) {
      // The server has abandoned the lecture by now: stop trying.
      this.phase = 'done';
      this.setConnection('closed');
      this.emit({ type: 'error', code: 'connection_lost', fatal: true });
      if (this.leaving) this.close();
      return;
    }
    this.setConnection('reconnecting');
    this.retryTimer = setTimeout(() => this.connect(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
  }

  checkAlive() {
    const ws = this.ws;
    if (!ws) return;
    if (ws.readyState === WebSocket.CONNECTING) {
      // A handshake that never completes (a black-holed network) is a lost connection too.
      if (Date.now() - this.connectStartedAt > CONNECT_TIMEOUT_MS) this.lost(ws);
      return;
    }
    if (ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - this.lastHeard > SILENCE_LIMIT_MS) {
      this.lost(ws);
    } else {
      ws.send(JSON.stringify({ type: 'ping' }));
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
        return this.started(frame);
      case 'reconnected':
        return this.reconnected(frame);
      case 'ack':
        return this.ack(frame.seq);
      case 'error':
        return this.error(frame);
      case 'pong':
        return this.pong(frame);
      default:
        return this.lectureFrame(frame);
    }
  }

  hello(frame) {
    this.helloSeen = true;
    this.hellos += 1;
    if (this.hellos > 1) this.reconnects += 1;
    this.maxLectureSecs = frame.maxLectureSecs || Infinity;
    if (frame.resumeGraceSecs) this.graceMs = frame.resumeGraceSecs * 1000;
    this.setConnection('open');
    if (this.lectureId && this.phase === 'live') {
      this.ws.send(JSON.stringify({ type: 'reconnect', lectureId: this.lectureId }));
    } else if (!this.lectureId && this.request) {
      this.sendRequest();
    }
  }

  // Sends the `start` or `text` on the current socket.
  sendRequest() {
    if (this.ending === 'cancel' && this.requestsSent === 0) {
      this.done(); // cancelled before anything was sent: nothing exists on the server
      return;
    }
    this.requestsSent += 1;
    this.requestOpen = true;
    this.ws.send(JSON.stringify(this.request));
  }

  // The current socket carries the lecture: the connection counts as back (backoff and grace
  // restart here, not at `hello`, so a socket whose start or reconnect is refused keeps
  // backing off and the grace keeps running).
  attached() {
    this.ready = true;
    this.backoff = BACKOFF_FIRST_MS;
    this.lostSince = null;
    this.gapMark = 0;
    this.gapPing = null;
  }

  started(frame) {
    this.lectureId = frame.lectureId;
    this.requestOpen = false;
    this.attached();
    this.phase = frame.format === 'text' ? 'processing' : 'live';
    this.emit({ type: 'frame', frame });
    if (this.phase === 'live') this.sync('recording');
    else this.toProcessing();
  }

  reconnected(frame) {
    this.attached();
    this.ack(frame.lastSeq);
    this.sentSeq = frame.lastSeq;
    this.emit({ type: 'frame', frame });
    this.sync(frame.state);
  }

  // Brings a (re)attached lecture in line with what happened here: resend what the server
  // lacks, and replay a pause, resume, finish or cancel the learner asked for while it was away.
  sync(serverState) {
    if (serverState === 'finished') {
      this.toProcessing();
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

  // The lecture is finished and its grade is to come. A page being left stops here.
  toProcessing() {
    if (this.phase !== 'done') this.phase = 'processing';
    if (this.leaving) this.close();
  }

  ack(seq) {
    if (seq > this.ackedSeq) this.ackedSeq = seq;
    while (this.pending.length && this.pending[0].seq <= seq) this.pending.shift();
    if (seq >= this.gapMark) this.gapMark = 0;
    this.emit({ type: 'progress' });
  }

  pong(frame) {
    // Every refusal of a chunk sent before the resend has (most likely) arrived by now: a
    // further refusal is news and gets its own resend.
    if (this.gapPing !== null && frame.nonce === this.gapPing) {
      this.gapMark = 0;
      this.gapPing = null;
    }
  }

  error(frame) {
    const { code } = frame;
    if (!this.ready) this.requestOpen = false; // the answer to our `start` (or `reconnect`)
    if (code === 'sequence_gap' || code === 'lecture_paused') return this.gap(frame);
    if (code === 'invalid_state') return; // a pause or resume racing our own state
    if (code === 'lecture_finished' || code === 'lecture_ended') return this.alreadyEnded();
    if (code === 'lecture_not_live' && this.lectureId) return this.endedElsewhere();
    if (code === 'too_many_live_lectures' && !this.lectureId && frame.lectureId && this.request.type === 'start') {
      return this.blocked(frame);
    }
    if (!this.lectureId && START_REFUSALS.has(code)) return this.refused(frame);
    if (code === 'superseded') {
      // Another tab or device took the lecture over: it is no longer ours to send.
      this.phase = 'done';
    } else if (!this.ready && this.recording()) {
      // Our `start` or `reconnect` was refused for a passing reason (`storage_unavailable`,
      // `internal`): try again on a new socket, with backoff, within the grace.
      this.lost(this.ws);
      return;
    }
    if (code === 'no_audio' && this.ending === 'finish') {
      // Nothing was recorded: the lecture can only be cancelled.
      this.ending = 'cancel';
      this.sendJson({ type: 'cancel' });
    } else if (code === 'storage_unavailable' && this.ending === 'finish' && !frame.fatal) {
      this.retryFinish();
    }
    this.emit({ type: 'error', code, message: frame.message, fatal: frame.fatal || this.phase === 'done' });
  }

  // `sequence_gap` or `lecture_paused`: resend from the chunk the server expects.
  gap(frame) {
    const expected = frame.expectedSeq || this.ackedSeq + 1;
    // Chunks sent after the refused one are refused too: answer the first refusal only, until
    // an ack reaches it or the pong of the ping sent after the resend comes back (the server
    // answers in order, so the refusals of the chunks sent before the resend come first).
    if (expected === this.gapMark) return;
    this.gapMark = expected;
    if (frame.code === 'lecture_paused' && !this.localPaused) this.sendJson({ type: 'resume' });
    this.resendFrom(expected);
    this.pings += 1;
    this.gapPing = `gap-${this.pings}`;
    this.sendJson({ type: 'ping', nonce: this.gapPing });
  }

  // `finish` (or a chunk) came after the lecture ended, e.g. at its time limit: not an error.
  // If we missed how it ended, read that from the lecture's event stream.
  alreadyEnded() {
    if (this.recording() && this.lectureId) this.endedElsewhere();
  }

  // The lecture ended while we were away: read how it ended from its event stream.
  endedElsewhere() {
    this.detach(this.ws, 1000);
    this.ws = null;
    this.ready = false;
    this.toProcessing();
    this.follow();
  }

  // A refused `start` or `text`: the attempt is over.
  refused(frame) {
    this.phase = 'done';
    this.detach(this.ws, 1000);
    this.ws = null;
    this.setConnection('closed');
    this.emit({ type: 'error', code: frame.code, message: frame.message, fatal: true });
    if (this.leaving) this.close();
  }

  /**
   * `too_many_live_lectures`: the learner already has a live lecture (`frame.lectureId`). When
   * our `start` went out on a socket lost before its answer, the server may have created that
   * lecture for us: resume it. Otherwise it is a leftover of an earlier page: cancel it and
   * start again (once). Failing both, the start is refused.
   */
  async blocked(frame) {
    const ws = this.ws;
    const blocking = frame.lectureId;
    const usable = () => ws === this.ws && ws.readyState === WebSocket.OPEN && !this.stopped();
    const ours = this.startInDoubt && (await this.mayBeOurs(blocking));
    // If the socket went meanwhile, the next one sends the `start` again after its `hello`.
    if (!usable()) return;
    if (ours) {
      this.startInDoubt = false;
      this.lectureId = blocking;
      this.phase = 'live';
      ws.send(JSON.stringify({ type: 'reconnect', lectureId: blocking }));
      return;
    }
    if (this.staleCancelled) {
      this.refused(frame);
      return;
    }
    this.staleCancelled = true;
    try {
      await this.endOverHttp(blocking, 'cancel');
    } catch {
      // The next `start` tells whether it is still in the way.
    }
    if (usable()) this.sendRequest();
  }

  // Whether live lecture `id` can be the one our `start` created: same topic and language.
  // When it cannot be read, assume it is (it is this learner's, and our start was in flight).
  async mayBeOurs(id) {
    try {
      const token = await this.getToken();
      const res = await fetch(`/api/v1/lectures/${encodeURIComponent(id)}`, {
        headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' },
      });
      if (!res.ok) return true;
      const lecture = await res.json();
      return lecture.topicId === this.request.topicId && lecture.language === this.request.language;
    } catch {
      return true;
    }
  }

  // The server could not store what `finish` needs (the audio is safe): ask again later.
  retryFinish() {
    clearTimeout(this.finishTimer);
    this.finishTimer = setTimeout(() => {
      if (this.ending === 'finish' && this.recording()) this.sendJson({ type: 'finish' });
    }, this.finishBackoff);
    this.finishBackoff = Math.min(this.finishBackoff * 2, BACKOFF_MAX_MS);
  }

  // A frame about the lecture itself, from the socket or the event stream.
  lectureFrame(frame) {
    const finished = frame.type === 'state' && frame.state === 'finished';
    if (finished && this.phase !== 'done') this.phase = 'processing';
    this.emit({ type: 'frame', frame });
    if (isFinal(frame)) this.done();
    else if (finished) this.toProcessing();
  }

  done() {
    this.phase = 'done';
    clearTimeout(this.retryTimer);
    clearTimeout(this.finishTimer);
    this.detach(this.ws, 1000);
    this.ws = null;
    if (this.sse) this.sse.close();
    this.sse = null;
    this.setConnection('closed');
    if (this.leaving) this.close();
  }

  // ---- After the socket: the lecture's event stream ----------------------------------------

  /** Follows the rest of a finished lecture over Server-Sent Events. */
  async follow() {
    if (this.stopped() || this.sse || !this.lectureId) return;
    this.setConnection('reconnecting');
    let token;
    try {
      token = await this.token();
    } catch {
      setTimeout(() => this.follow(), this.backoff);
      return;
    }
    if (this.stopped() || this.sse) return;
    const url = `/api/v1/lectures/${encodeURIComponent(this.lectureId)}/events?token=${encodeURIComponent(token)}`;
    const sse = new EventSource(url);
    this.sse = sse;
    let opened = false; // the browser's current attempt was accepted
    // The stream replays the lecture from its start: the page rebuilds what it shows.
    if (this.sseVersion < 0) this.emit({ type: 'replay' });
    sse.onopen = () => {
      opened = true;
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
        opened = false; // the browser reconnects by itself
        this.setConnection('reconnecting');
        return;
      }
      // Refused (an expired token, say): open a new stream with a fresh token. Refused before
      // it ever opened: the token may be bad although it looks valid here, so force a refresh.
      if (!opened) this.forceToken = true;
      sse.close();
      if (this.sse !== sse) return;
      this.sse = null;
      this.setConnection('reconnecting');
      setTimeout(() => this.follow(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    };
  }
}
