/**
 * avatard browser client.
 *
 * One WebSocket at /ws on the page's own origin carries everything:
 *   server -> page  binary video frames (JPEG) and audio chunks (PCM16 LE),
 *                   JSON status / transcription / error / gesture(s) messages;
 *   page -> server  binary microphone audio (PCM16 LE, 16 kHz mono) and JSON
 *                   text_input / control messages.
 *
 * Pieces, top to bottom: wire format (pure functions), state exposed on
 * window.avatard, UI helpers (toasts, transcript), audio playback (worklet ring
 * buffer), video (decode + draw in step with the sound), microphone, the
 * connection with its reconnect policy, and the wiring.
 */

// ---------------------------------------------------------------- constants

const MSG_VIDEO = 0x01;
const MSG_AUDIO = 0x02;
const VIDEO_HEADER_BYTES = 21;   // u8 type, u16 w, u16 h, f32 fps, u32 len, f64 ts
const AUDIO_HEADER_BYTES = 18;   // u8 type, u32 rate, u8 channels, u32 len, f64 ts

const RECONNECT_BASE_S = 0.5;    // first retry delay; doubles per failed attempt
const RECONNECT_MAX_S = 8;
const RECONNECT_JITTER = 0.2;    // +-20 % so a restarted daemon is not hit in lockstep
const CLOSE_POLICY_VIOLATION = 1008;   // bad or missing token
const CLOSE_TRY_AGAIN_LATER = 1013;    // server full

const PLAYER_RATE = 16000;       // the stream's default rate; the worklet resamples others
const MIC_RATE = 16000;          // what the server expects from binary messages
const MIC_CHUNK_MS = 40;         // one chunk per video frame's worth of time

// Video is held back until the sound of the same instant is audible, so lips
// match speech despite the audio jitter buffer. Bounded so a stalled audio clock
// can never freeze the picture.
const MAX_HELD_FRAMES = 12;      // ~0.5 s at 25 fps; older frames are dropped
const MAX_HOLD_S = 0.6;          // show a frame after this long whatever the clock says
const SYNC_MAX_SKEW_S = 1.0;     // clock this far from the frames: stop trusting it
const SYNC_LEAD_S = 0.01;        // frames may run this much ahead of the sound

const MAX_TRANSCRIPT_ENTRIES = 500;
const TOAST_MS = 4500;
const DEFAULT_GESTURES = ['mini_wave_hello', 'laugh_react', 'nod_agree', 'heart_gesture', 'thumbs_up'];

// ------------------------------------------------------------- wire format

export class ProtocolError extends Error {}

/** Parse one binary server message into {kind: 'video'|'audio', ...}. */
export function parseBinaryMessage(buffer) {
  if (buffer.byteLength < 1) throw new ProtocolError('empty binary message');
  const view = new DataView(buffer);
  const type = view.getUint8(0);
  if (type === MSG_VIDEO) {
    if (buffer.byteLength < VIDEO_HEADER_BYTES) {
      throw new ProtocolError(`video message of ${buffer.byteLength} bytes is shorter than its ${VIDEO_HEADER_BYTES}-byte header`);
    }
    const length = view.getUint32(9);
    if (VIDEO_HEADER_BYTES + length > buffer.byteLength) {
      throw new ProtocolError(`video data_length ${length} exceeds the ${buffer.byteLength - VIDEO_HEADER_BYTES} bytes received`);
    }
    return {
      kind: 'video',
      width: view.getUint16(1),
      height: view.getUint16(3),
      fps: view.getFloat32(5),
      timestamp: view.getFloat64(13),
      jpeg: new Uint8Array(buffer, VIDEO_HEADER_BYTES, length),
    };
  }
  if (type === MSG_AUDIO) {
    if (buffer.byteLength < AUDIO_HEADER_BYTES) {
      throw new ProtocolError(`audio message of ${buffer.byteLength} bytes is shorter than its ${AUDIO_HEADER_BYTES}-byte header`);
    }
    const sampleRate = view.getUint32(1);
    const channels = view.getUint8(5);
    const length = view.getUint32(6);
    if (AUDIO_HEADER_BYTES + length > buffer.byteLength) {
      throw new ProtocolError(`audio data_length ${length} exceeds the ${buffer.byteLength - AUDIO_HEADER_BYTES} bytes received`);
    }
    if (sampleRate < 3000 || sampleRate > 384000 || channels < 1) {
      throw new ProtocolError(`audio chunk with sample_rate ${sampleRate} and ${channels} channels`);
    }
    return {
      kind: 'audio',
      sampleRate,
      channels,
      timestamp: view.getFloat64(10),
      pcm: new DataView(buffer, AUDIO_HEADER_BYTES, length),
    };
  }
  throw new ProtocolError(`unknown binary message type 0x${type.toString(16).padStart(2, '0')}`);
}

/** PCM16 little-endian (interleaved) -> mono Float32 in [-1, 1). */
export function pcm16ToFloat32(pcm, channels) {
  const frames = Math.floor(pcm.byteLength / (2 * channels));
  const out = new Float32Array(frames);
  const scale = 1 / (32768 * channels);
  for (let i = 0, off = 0; i < frames; i++) {
    let s = 0;
    for (let c = 0; c < channels; c++, off += 2) s += pcm.getInt16(off, true);
    out[i] = s * scale;
  }
  return out;
}

export function webSocketUrl(loc = window.location) {
  const scheme = loc.protocol === 'https:' ? 'wss' : 'ws';
  const token = new URLSearchParams(loc.search).get('token');
  const query = token ? `?token=${encodeURIComponent(token)}` : '';
  return `${scheme}://${loc.host}/ws${query}`;
}

const msg = {
  textInput: (text) => ({ type: 'text_input', data: { text } }),
  interrupt: () => ({ type: 'control', data: { command: 'interrupt' } }),
  gesture: (gesture) => ({ type: 'control', data: { command: 'gesture', params: { gesture } } }),
  subscribe: (video, audio) => ({ type: 'control', data: { command: 'subscribe', params: { video, audio } } }),
};

// ----------------------------------------------------------------- state

/** Everything an automated test (or a curious person in devtools) may read. */
const state = {
  // connection
  ws: null,
  connection: 'connecting',   // connecting|connected|reconnecting|server_full|unauthorized
  clientId: null,
  reconnects: 0,
  lastCloseCode: null,
  // server status
  lastStatus: null,           // last data.status of a status message, verbatim
  brainStatus: null,          // last brain_* status
  lastGesture: null,
  gestures: DEFAULT_GESTURES.slice(),
  lastError: null,            // last {code, message} error message
  // video
  framesReceived: 0,
  framesDecoded: 0,
  framesDrawn: 0,
  framesDropped: 0,           // decode busy, queue full, or superseded before shown
  frameWidth: 0,
  frameHeight: 0,
  fps: 0,                     // frames drawn over the last second
  videoSync: 'free',          // 'audio': frames wait for their sound; 'free': shown on arrival
  videoHoldMs: 0,             // how long the last shown frame waited after decoding
  // audio out
  audioChunksReceived: 0,
  audioChunksDropped: 0,      // arrived while the player was not running
  samplesPosted: 0,           // posted to the worklet by the page
  samplesQueued: 0,           // accepted into the worklet's ring (reported by the worklet)
  samplesPlayed: 0,           // played out by the worklet
  samplesBuffered: 0,         // in the ring right now
  underruns: 0,
  audioContextState: null,
  playerReady: false,
  // microphone
  micActive: false,
  micChunksSent: 0,
  micBytesSent: 0,
  micLevel: 0,                // RMS of the last chunk, 0..1
  // text
  transcript: [],             // [{role, text, is_final, timestamp, cut?}]
  protocolErrors: 0,
};
window.avatard = state;

// -------------------------------------------------------------------- DOM

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $('conn'),
  brain: $('brain'),
  fps: $('fps'),
  stage: $('stage'),
  canvas: $('video'),
  placeholder: $('placeholder'),
  activity: $('activity'),
  gestureBadge: $('gesture-badge'),
  soundOverlay: $('sound-overlay'),
  talk: $('talk'),
  camera: $('camera'),
  talkLabel: $('talk-label'),
  meter: $('meter'),
  interrupt: $('interrupt'),
  subVideo: $('sub-video'),
  subAudio: $('sub-audio'),
  gestures: $('gestures'),
  composer: $('composer'),
  text: $('text'),
  transcript: $('transcript'),
  clear: $('clear'),
  toasts: $('toasts'),
};

function setPill(el, color, text, title = '') {
  el.dataset.color = color;
  el.querySelector('.label').textContent = text;
  el.title = title;
}

function humanize(name) {
  const s = String(name).replace(/[_-]+/g, ' ').trim();
  return s.charAt(0).toUpperCase() + s.slice(1);
}

// ------------------------------------------------------------------ toasts

let lastToast = { text: '', at: 0 };
function toast(text, kind = 'error') {
  const now = performance.now();
  if (text === lastToast.text && now - lastToast.at < 1500) return;   // no stacks of the same line
  lastToast = { text, at: now };
  const el = document.createElement('div');
  el.className = `toast ${kind}`;
  el.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  el.textContent = text;
  ui.toasts.append(el);
  while (ui.toasts.children.length > 4) ui.toasts.firstElementChild.remove();
  setTimeout(() => {
    el.classList.add('leaving');
    setTimeout(() => el.remove(), 300);
  }, TOAST_MS);
}

// -------------------------------------------------------------- transcript

class Transcript {
  constructor(root) {
    this.root = root;
    this.open = { user: null, assistant: null };   // the line each role is still speaking
  }

  #stickToBottom(fn) {
    const r = this.root;
    const atBottom = r.scrollTop + r.clientHeight >= r.scrollHeight - 48;
    fn();
    if (atBottom) r.scrollTop = r.scrollHeight;
  }

  #newLine(role, timestamp) {
    this.root.querySelector('.empty')?.remove();
    const entry = { role, text: '', is_final: false, timestamp: timestamp ?? Date.now() / 1000 };
    const el = document.createElement('div');
    el.className = `msg ${role}`;
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = role === 'user' ? 'You' : 'Avatar';
    const body = document.createElement('p');
    el.append(who, body);
    this.root.append(el);
    state.transcript.push(entry);
    while (state.transcript.length > MAX_TRANSCRIPT_ENTRIES) state.transcript.shift();
    while (this.root.children.length > MAX_TRANSCRIPT_ENTRIES) this.root.firstElementChild.remove();
    return { entry, el, body };
  }

  /** A transcription message: partials replace the open line, is_final closes it. */
  update({ text, is_final: isFinal, role, timestamp }) {
    role = role === 'user' ? 'user' : 'assistant';
    text = typeof text === 'string' ? text : '';
    this.#stickToBottom(() => {
      let line = this.open[role];
      if (!line) {
        if (isFinal && !text) return;
        line = this.open[role] = this.#newLine(role, timestamp);
      }
      if (text || !isFinal) line.entry.text = text;
      line.entry.is_final = !!isFinal;
      line.body.textContent = line.entry.text;
      line.el.classList.toggle('partial', !isFinal);
      if (isFinal) {
        this.open[role] = null;
        if (!line.entry.text) {
          line.el.remove();
          state.transcript.splice(state.transcript.indexOf(line.entry), 1);
        }
      }
    });
  }

  note(text) {
    this.#stickToBottom(() => {
      this.root.querySelector('.empty')?.remove();
      const el = document.createElement('div');
      el.className = 'note';
      el.textContent = text;
      this.root.append(el);
    });
  }

  /**
   * Close lines that will never get their is_final (connection dropped, or the
   * avatar was interrupted mid-sentence) so they stop looking in progress.
   */
  cutOpenLines(roles = ['user', 'assistant']) {
    for (const role of roles) {
      const line = this.open[role];
      if (!line) continue;
      line.entry.cut = true;
      line.el.classList.remove('partial');
      line.el.classList.add('cut');
      this.open[role] = null;
    }
  }

  clear() {
    this.open = { user: null, assistant: null };
    state.transcript.length = 0;
    this.root.replaceChildren();
    const p = document.createElement('p');
    p.className = 'empty';
    p.textContent = 'Say hello: press Talk or type a message.';
    this.root.append(p);
  }
}

// --------------------------------------------------------- audio playback

/**
 * Plays the stream through player-worklet.js. The worklet reports what it
 * holds and the stream timestamp at its read head; `clock()` turns that into
 * the timestamp audible right now, which paces the video.
 */
class WorkletPlayer {
  constructor() {
    this.ctx = null;
    this.node = null;
    this.stats = null;
    this.ready = false;
  }

  async init() {
    try {
      this.ctx = new AudioContext({ sampleRate: PLAYER_RATE, latencyHint: 'interactive' });
    } catch (err) {
      console.warn('avatard: no %d Hz AudioContext (%s); resampling in the worklet', PLAYER_RATE, err);
      this.ctx = new AudioContext({ latencyHint: 'interactive' });
    }
    this.ctx.addEventListener('statechange', updateSoundOverlay);
    updateSoundOverlay();
    await this.ctx.audioWorklet.addModule(new URL('./player-worklet.js', import.meta.url));
    this.node = new AudioWorkletNode(this.ctx, 'avatard-player', {
      numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1],
    });
    this.node.port.onmessage = (e) => this.#onStats(e.data);
    this.node.connect(this.ctx.destination);
    this.ready = true;
    state.playerReady = true;
  }

  #onStats(s) {
    if (s.type !== 'stats') return;
    this.stats = s;
    state.samplesQueued = s.written;
    state.samplesPlayed = s.played;
    state.samplesBuffered = s.buffered;
    state.underruns = s.underruns;
  }

  push(samples, sampleRate, timestamp) {
    if (!this.ready || this.ctx.state !== 'running') {
      // A suspended context would replay a backlog of stale speech on resume.
      state.audioChunksDropped++;
      return;
    }
    const count = samples.length;   // read before the transfer detaches the buffer
    this.node.port.postMessage({ type: 'pcm', samples, sampleRate, ts: timestamp }, [samples.buffer]);
    state.samplesPosted += count;
  }

  flush() {
    this.node?.port.postMessage({ type: 'flush' });
    this.stats = null;
  }

  /** Stream timestamp of the sound leaving the speakers now, or null. */
  clock() {
    const s = this.stats;
    if (!s || !s.playing || s.headTs == null || this.ctx.state !== 'running') return null;
    const age = this.ctx.currentTime - s.ctxTime;
    if (age < -0.1 || age > 0.3) return null;   // stats are stale: the worklet stalled
    const latency = this.ctx.outputLatency || this.ctx.baseLatency || 0;
    return s.headTs + age - latency;
  }
}

/**
 * Fallback when AudioWorklet is unavailable (page served over plain http to a
 * non-localhost address is not a secure context): schedule one buffer per
 * chunk back to back. Slightly worse at underruns, no A/V clock.
 */
class BufferPlayer {
  constructor() {
    this.ctx = null;
    this.next = 0;
    this.sources = new Set();
    this.ready = false;
  }

  async init() {
    try {
      this.ctx = new AudioContext({ sampleRate: PLAYER_RATE, latencyHint: 'interactive' });
    } catch {
      this.ctx = new AudioContext({ latencyHint: 'interactive' });
    }
    this.ctx.addEventListener('statechange', updateSoundOverlay);
    updateSoundOverlay();
    this.ready = true;
    state.playerReady = true;
  }

  push(samples, sampleRate, timestamp) {
    if (!this.ready || this.ctx.state !== 'running') { state.audioChunksDropped++; return; }
    const now = this.ctx.currentTime;
    if (this.next < now + 0.01) {
      if (this.next > 0) state.underruns++;
      this.next = now + 0.1;   // re-open a jitter buffer
    }
    const buffer = this.ctx.createBuffer(1, samples.length, sampleRate);
    buffer.copyToChannel(samples, 0);
    const src = this.ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(this.ctx.destination);
    src.onended = () => {
      this.sources.delete(src);
      state.samplesPlayed += samples.length;
    };
    src.start(this.next);
    this.next += buffer.duration;
    this.sources.add(src);
    state.samplesPosted += samples.length;
    state.samplesQueued += samples.length;
  }

  flush() {
    for (const s of this.sources) { s.onended = null; s.stop(); }
    this.sources.clear();
    this.next = 0;
  }

  clock() { return null; }
}

const player = window.isSecureContext && window.AudioWorkletNode ? new WorkletPlayer() : new BufferPlayer();

function updateSoundOverlay() {
  const ctx = player.ctx;
  state.audioContextState = ctx ? ctx.state : null;
  ui.soundOverlay.hidden = !(ctx && ctx.state === 'suspended' && ui.subAudio.checked);
}

function resumeAudio() {
  if (player.ctx && player.ctx.state === 'suspended') {
    player.ctx.resume().catch((err) => console.warn('avatard: resume failed', err));
  }
}

function onAudioChunk(chunk) {
  state.audioChunksReceived++;
  if (!ui.subAudio.checked) return;
  player.push(pcm16ToFloat32(chunk.pcm, chunk.channels), chunk.sampleRate, chunk.timestamp);
}

// ------------------------------------------------------------------ video

/**
 * Decodes JPEG frames off the main thread (createImageBitmap) and draws them on
 * the canvas from a requestAnimationFrame loop. At most one decode is in
 * flight: a frame arriving while one is pending is dropped, so a slow machine
 * shows fewer frames instead of falling further and further behind.
 */
class FrameView {
  constructor(canvas) {
    this.canvas = canvas;
    this.g = canvas.getContext('2d', { alpha: false });
    this.decoding = false;
    this.held = [];          // [{bitmap, ts, at}] decoded, waiting for their sound
    this.drawTimes = [];
    this.hasPicture = false;
    requestAnimationFrame(() => this.#tick());
    setInterval(() => this.#updateFps(), 500);
  }

  async submit(frame) {
    state.framesReceived++;
    if (!ui.subVideo.checked) return;
    if (this.decoding) { state.framesDropped++; return; }
    this.decoding = true;
    try {
      const bitmap = await createImageBitmap(new Blob([frame.jpeg], { type: 'image/jpeg' }));
      state.framesDecoded++;
      this.held.push({ bitmap, ts: frame.timestamp, at: performance.now() });
      while (this.held.length > MAX_HELD_FRAMES) {
        this.held.shift().bitmap.close();
        state.framesDropped++;
      }
    } catch (err) {
      state.framesDropped++;
      console.warn('avatard: JPEG decode failed', err);
    } finally {
      this.decoding = false;
    }
  }

  #pick() {
    const held = this.held;
    const newest = held.length - 1;
    const clock = player.clock();
    if (clock == null || Math.abs(held[newest].ts - clock) > SYNC_MAX_SKEW_S) {
      state.videoSync = 'free';
      return newest;
    }
    state.videoSync = 'audio';
    for (let i = newest; i >= 0; i--) {
      if (held[i].ts <= clock + SYNC_LEAD_S) return i;
    }
    return performance.now() - held[0].at > MAX_HOLD_S * 1000 ? 0 : -1;
  }

  #tick() {
    requestAnimationFrame(() => this.#tick());
    if (this.held.length === 0) return;
    const i = this.#pick();
    if (i < 0) return;
    const shown = this.held.splice(0, i + 1);
    const { bitmap, at } = shown.pop();
    state.videoHoldMs = Math.round(performance.now() - at);
    for (const f of shown) { f.bitmap.close(); state.framesDropped++; }
    state.frameWidth = bitmap.width;
    state.frameHeight = bitmap.height;
    if (this.canvas.width !== bitmap.width || this.canvas.height !== bitmap.height) {
      this.canvas.width = bitmap.width;
      this.canvas.height = bitmap.height;
      ui.stage.style.setProperty('--ar', (bitmap.width / bitmap.height).toFixed(4));
    }
    this.g.drawImage(bitmap, 0, 0);
    bitmap.close();
    state.framesDrawn++;
    this.drawTimes.push(performance.now());
    if (!this.hasPicture) {
      this.hasPicture = true;
      ui.stage.classList.add('has-picture');
    }
  }

  #updateFps() {
    const cutoff = performance.now() - 1000;
    while (this.drawTimes.length && this.drawTimes[0] < cutoff) this.drawTimes.shift();
    state.fps = this.drawTimes.length;
    ui.fps.querySelector('.label').textContent = `${state.fps} fps`;
  }

  clear(message, waiting = true) {
    for (const f of this.held) f.bitmap.close();
    this.held = [];
    this.hasPicture = false;
    ui.stage.classList.remove('has-picture');
    ui.placeholder.querySelector('.label').textContent = message;
    ui.placeholder.querySelector('.spinner').hidden = !waiting;
  }
}

// ------------------------------------------------------------- microphone

/**
 * Captures the microphone in its own AudioContext at the device's rate (a
 * 16 kHz context fed by a 48 kHz device is not supported everywhere) and lets
 * mic-worklet.js resample to 16 kHz. Chunks go out as binary messages.
 */
class Mic {
  constructor(onChunk) {
    this.onChunk = onChunk;
    this.ctx = null;
    this.stream = null;
    this.node = null;
    this.busy = false;
  }

  get active() { return this.stream !== null; }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    try {
      this.ctx = new AudioContext({ latencyHint: 'interactive' });
      await this.ctx.audioWorklet.addModule(new URL('./mic-worklet.js', import.meta.url));
      const source = this.ctx.createMediaStreamSource(this.stream);
      this.node = new AudioWorkletNode(this.ctx, 'avatard-mic', {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { targetRate: MIC_RATE, chunkMs: MIC_CHUNK_MS },
      });
      this.node.port.onmessage = (e) => { if (e.data.type === 'chunk') this.onChunk(e.data); };
      // The worklet only runs while something pulls on it: route it into the
      // destination through a muted gain so the mic is never heard locally.
      const mute = this.ctx.createGain();
      mute.gain.value = 0;
      source.connect(this.node).connect(mute).connect(this.ctx.destination);
      await this.ctx.resume();
    } catch (err) {
      await this.stop();
      throw err;
    }
    for (const track of this.stream.getAudioTracks()) {
      track.addEventListener('ended', () => { this.stop().then(renderMic); });
    }
  }

  async stop() {
    this.node?.port.postMessage({ type: 'flush' });
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    const ctx = this.ctx;
    this.ctx = null;
    this.node = null;
    if (ctx) {
      // Give the flushed tail a moment to arrive before the port goes away.
      await new Promise((r) => setTimeout(r, 60));
      await ctx.close().catch(() => {});
    }
  }
}

let meterLevel = 0;
function onMicChunk({ pcm, rms }) {
  state.micLevel = rms;
  // dBFS mapped onto the meter: -60 dB empty, 0 dB full.
  const db = 20 * Math.log10(Math.max(rms, 1e-6));
  const level = Math.min(1, Math.max(0, (db + 60) / 60));
  meterLevel = Math.max(level, meterLevel * 0.7);
  ui.meter.style.transform = `scaleX(${meterLevel.toFixed(3)})`;
  if (conn.sendBinary(pcm)) {
    state.micChunksSent++;
    state.micBytesSent += pcm.byteLength;
  }
}

const mic = new Mic(onMicChunk);

function renderMic() {
  state.micActive = mic.active;
  ui.talk.classList.toggle('active', mic.active);
  ui.talk.setAttribute('aria-pressed', String(mic.active));
  ui.talkLabel.textContent = mic.active ? 'Stop' : 'Talk';
  if (!mic.active) {
    meterLevel = 0;
    ui.meter.style.transform = 'scaleX(0)';
  }
}

async function toggleMic() {
  if (mic.busy) return;
  mic.busy = true;
  ui.talk.disabled = true;
  try {
    if (mic.active) {
      await mic.stop();
    } else {
      await mic.start();
    }
  } catch (err) {
    const denied = err && (err.name === 'NotAllowedError' || err.name === 'SecurityError');
    toast(denied ? 'Microphone permission denied' : `Microphone unavailable: ${err.message || err}`);
    console.warn('avatard: microphone', err);
  } finally {
    mic.busy = false;
    ui.talk.disabled = false;
    renderMic();
  }
}

// ------------------------------------------------------------- connection

/**
 * The WebSocket and its reconnect policy: exponential backoff from
 * RECONNECT_BASE_S doubling to RECONNECT_MAX_S with jitter, reset once the
 * server greets us with status "connected". 1008 (not authorized) is final:
 * a new attempt would carry the same token. 1013 (server full) backs off like
 * any other failure, since a slot may free up.
 */
class Connection {
  constructor(url, handlers) {
    this.url = url;
    this.h = handlers;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.deadline = 0;
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    this.h.onState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      toast(`Cannot open WebSocket: ${err.message}`);
      this.#retry('failed');
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    state.ws = ws;
    ws.onopen = () => this.h.onOpen();
    ws.onmessage = (ev) => {
      if (typeof ev.data === 'string') this.h.onText(ev.data);
      else this.h.onBinary(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      state.lastCloseCode = ev.code;
      this.h.onClose(ev);
      if (ev.code === CLOSE_POLICY_VIOLATION) {
        this.h.onState('unauthorized', ev.reason);
      } else {
        this.#retry(ev.code === CLOSE_TRY_AGAIN_LATER ? 'server_full' : 'reconnecting', ev.reason);
      }
    };
  }

  /** The server accepted us: the next failure starts the backoff afresh. */
  healthy() { this.attempt = 0; }

  #retry(kind, reason = '') {
    const base = Math.min(RECONNECT_MAX_S, RECONNECT_BASE_S * 2 ** this.attempt);
    const jitter = 1 + RECONNECT_JITTER * (2 * Math.random() - 1);
    const delay = Math.min(RECONNECT_MAX_S, base * jitter);
    this.attempt++;
    this.deadline = performance.now() + delay * 1000;
    this.timer = setTimeout(() => { state.reconnects++; this.connect(); }, delay * 1000);
    this.h.onState(kind, reason);
  }

  /** Skip the rest of the wait (status pill click, browser back online). */
  retryNow() {
    if (this.ws) return;
    state.reconnects++;
    this.connect();
  }

  get open() { return this.ws !== null && this.ws.readyState === WebSocket.OPEN; }

  send(obj) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  sendBinary(buf) {
    if (!this.open) return false;
    this.ws.send(buf);
    return true;
  }
}

// --------------------------------------------------------- server messages

const frames = new FrameView(ui.canvas);
const transcript = new Transcript(ui.transcript);

const ACTIVITY = {
  listening: ['green', 'Listening'],
  thinking: ['amber', 'Thinking…'],
  speaking: ['accent', 'Speaking'],
  interrupted: ['red', 'Interrupted'],
};
const BRAIN = {
  brain_connecting: ['amber', 'Brain connecting…'],
  brain_connected: ['green', 'Brain ready'],
  brain_reconnecting: ['amber', 'Brain reconnecting…'],
  brain_failed: ['red', 'Brain failed'],
};

function onStatus(data) {
  const status = String(data.status ?? '');
  if (status.startsWith('camera_')) {  // the camera indicator, not the avatar's activity
    camera.toModel = status === 'camera_sending';
    renderCamera();
    return;
  }
  state.lastStatus = status;
  if (status === 'connected') {
    state.clientId = data.client_id ?? null;
    conn.healthy();
    renderConnection('connected');
    return;
  }
  if (status in BRAIN) {
    state.brainStatus = status;
    const [color, text] = BRAIN[status];
    const reason = data.reason ? String(data.reason) : '';
    ui.brain.hidden = false;
    setPill(ui.brain, color, text, reason ? `${text}: ${reason}` : text);
    if (status === 'brain_failed') toast(reason ? `Brain failed: ${reason}` : 'Brain failed');
    return;
  }
  if (status === 'interrupted') {
    player.flush();
    transcript.cutOpenLines(['assistant']);
    transcript.note('interrupted');
  }
  const [color, text] = ACTIVITY[status] ?? ['grey', status];
  ui.stage.dataset.activity = status;
  ui.activity.hidden = false;
  setPill(ui.activity, color, text);
}

function showGesture(name) {
  state.lastGesture = name;
  ui.gestureBadge.querySelector('.label').textContent = humanize(name);
  ui.gestureBadge.hidden = false;
  ui.gestureBadge.classList.remove('pop');
  void ui.gestureBadge.offsetWidth;   // restart the animation
  ui.gestureBadge.classList.add('pop');
  clearTimeout(showGesture.timer);
  showGesture.timer = setTimeout(() => {
    ui.gestureBadge.hidden = true;
    for (const b of ui.gestures.children) b.classList.remove('fired');
  }, 2500);
  for (const b of ui.gestures.children) b.classList.toggle('fired', b.dataset.gesture === name);
}

function renderGestures(names) {
  state.gestures = names.slice();
  ui.gestures.replaceChildren(...names.map((name) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'chip';
    b.dataset.gesture = name;
    b.title = name;
    b.textContent = humanize(name);
    b.addEventListener('click', () => {
      if (!conn.send(msg.gesture(name))) toast('Not connected');
    });
    return b;
  }));
}

function onText(text) {
  let m;
  try {
    m = JSON.parse(text);
  } catch {
    state.protocolErrors++;
    console.warn('avatard: bad JSON from server', text.slice(0, 200));
    return;
  }
  const data = m && typeof m.data === 'object' && m.data !== null ? m.data : {};
  switch (m.type) {
    case 'status': onStatus(data); break;
    case 'transcription': transcript.update(data); break;
    case 'error':
      state.lastError = { code: data.code ?? null, message: data.message ?? '' };
      toast(data.message ? `${data.message}${data.code ? ` (${data.code})` : ''}` : `Error ${data.code ?? ''}`);
      break;
    case 'gesture': if (data.gesture) showGesture(String(data.gesture)); break;
    case 'gestures':
      if (Array.isArray(data.gestures) && data.gestures.length) renderGestures(data.gestures.map(String));
      break;
    default: console.debug('avatard: ignoring message', m.type);
  }
}

function onBinary(buffer) {
  let m;
  try {
    m = parseBinaryMessage(buffer);
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw err;
    if (state.protocolErrors++ < 5) console.warn('avatard:', err.message);
    return;
  }
  if (m.kind === 'video') frames.submit(m);
  else onAudioChunk(m);
}

// ------------------------------------------------------ connection display

let countdownTimer = null;
function renderConnection(kind, reason = '') {
  state.connection = kind;
  clearInterval(countdownTimer);
  countdownTimer = null;
  ui.stage.classList.toggle('offline', kind !== 'connected');
  const secondsLeft = () => Math.max(1, Math.ceil((conn.deadline - performance.now()) / 1000));
  switch (kind) {
    case 'connecting':
      setPill(ui.conn, 'amber', 'Connecting…');
      break;
    case 'connected':
      setPill(ui.conn, 'green', state.clientId ? `Connected · ${state.clientId}` : 'Connected');
      break;
    case 'reconnecting':
    case 'server_full': {
      const prefix = kind === 'server_full' ? 'Server full · retrying' : 'Reconnecting';
      const tick = () => setPill(ui.conn, kind === 'server_full' ? 'red' : 'amber',
        `${prefix} in ${secondsLeft()}s`, 'Click to retry now');
      tick();
      countdownTimer = setInterval(tick, 250);
      break;
    }
    case 'unauthorized':
      setPill(ui.conn, 'red', 'Not authorized', reason || 'The server refused the token. Click to retry.');
      toast('Not authorized: open the page with ?token=…');
      break;
    default:
      setPill(ui.conn, 'grey', kind);
  }
}

const conn = new Connection(webSocketUrl(), {
  onState: renderConnection,
  onOpen() {
    // Subscriptions are per connection: restore the checkboxes after a reconnect.
    if (!ui.subVideo.checked || !ui.subAudio.checked) {
      conn.send(msg.subscribe(ui.subVideo.checked, ui.subAudio.checked));
    }
  },
  onClose() {
    transcript.cutOpenLines();
    ui.activity.hidden = true;
    delete ui.stage.dataset.activity;
  },
  onText,
  onBinary,
});

// ------------------------------------------------------------------ camera

/**
 * The Camera button: getUserMedia video, one JPEG a second (the server's and Gemini Live's limit), at most
 * 768 px on the long side, sent as {"type": "camera_frame", "data": {"jpeg": BASE64}} (docs/protocol.md).
 * The button reads "Camera → model" while the server says frames reach the model (status camera_sending).
 */
const CAMERA_INTERVAL_MS = 1000;
const CAMERA_MAX_SIDE = 768;
const CAMERA_QUALITY = 0.8;
const camera = { stream: null, timer: null, video: null, canvas: document.createElement('canvas'), toModel: false };

async function cameraFrame() {
  const v = camera.video;
  if (!v || !v.videoWidth) return;
  const scale = Math.min(1, CAMERA_MAX_SIDE / Math.max(v.videoWidth, v.videoHeight));
  camera.canvas.width = Math.round(v.videoWidth * scale);
  camera.canvas.height = Math.round(v.videoHeight * scale);
  camera.canvas.getContext('2d').drawImage(v, 0, 0, camera.canvas.width, camera.canvas.height);
  const blob = await new Promise((resolve) => camera.canvas.toBlob(resolve, 'image/jpeg', CAMERA_QUALITY));
  if (!blob) return;
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  conn.send({ type: 'camera_frame', data: { jpeg: btoa(binary) } });
}

function renderCamera() {
  const on = camera.stream !== null;
  ui.camera.classList.toggle('active', on);
  ui.camera.setAttribute('aria-pressed', String(on));
  $('camera-label').textContent = on ? (camera.toModel ? 'Camera → model' : 'Camera on') : 'Camera';
}

async function toggleCamera() {
  if (camera.stream) {
    clearInterval(camera.timer);
    camera.stream.getTracks().forEach((t) => t.stop());
    camera.stream = camera.video = null;
  } else {
    try {
      camera.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (err) {
      toast(`Camera unavailable: ${err.message ?? err}`);
      return;
    }
    camera.video = Object.assign(document.createElement('video'), { muted: true, playsInline: true });
    camera.video.srcObject = camera.stream;
    await camera.video.play();
    camera.timer = setInterval(cameraFrame, CAMERA_INTERVAL_MS);
  }
  renderCamera();
}

// ------------------------------------------------------------------ wiring

ui.talk.addEventListener('click', () => { resumeAudio(); toggleMic(); });
ui.camera.addEventListener('click', toggleCamera);
ui.interrupt.addEventListener('click', () => {
  resumeAudio();
  player.flush();   // silence now; the server confirms with status "interrupted"
  if (!conn.send(msg.interrupt())) toast('Not connected');
});
ui.composer.addEventListener('submit', (e) => {
  e.preventDefault();
  resumeAudio();
  const text = ui.text.value.trim();
  if (!text) return;
  if (!conn.send(msg.textInput(text))) { toast('Not connected: message not sent'); return; }
  ui.text.value = '';
});
for (const box of [ui.subVideo, ui.subAudio]) {
  box.addEventListener('change', () => {
    conn.send(msg.subscribe(ui.subVideo.checked, ui.subAudio.checked));
    if (!ui.subAudio.checked) player.flush();
    if (!ui.subVideo.checked) frames.clear('Video off', false);
    else if (!frames.hasPicture) frames.clear('Waiting for video…');
    updateSoundOverlay();
  });
}
ui.conn.addEventListener('click', () => {
  if (state.connection !== 'connected' && state.connection !== 'connecting') conn.retryNow();
});
ui.soundOverlay.addEventListener('click', resumeAudio);
ui.clear.addEventListener('click', () => transcript.clear());
document.addEventListener('pointerdown', resumeAudio);
document.addEventListener('keydown', resumeAudio);
window.addEventListener('online', () => {
  if (state.connection === 'reconnecting' || state.connection === 'server_full') conn.retryNow();
});

if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
  ui.talk.disabled = true;
  ui.talk.title = 'The microphone needs a secure context: open this page via https or localhost';
}

renderGestures(DEFAULT_GESTURES);
transcript.clear();
renderMic();
player.init().catch((err) => {
  toast(`Sound unavailable: ${err.message || err}`);
  console.error('avatard: audio init failed', err);
});
conn.connect();
