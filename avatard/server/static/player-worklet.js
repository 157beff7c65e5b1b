/**
 * avatard playback worklet: a ring buffer of the avatar's speech, played at
 * the context's rate.
 *
 * Messages in (port):
 *   {type: 'pcm', samples: Float32Array, sampleRate, ts}  append one chunk
 *   {type: 'flush'}                                        drop everything queued
 * Messages out (port), every STATS_INTERVAL_S:
 *   {type: 'stats', written, played, dropped, buffered, underruns, overflows,
 *    playing, headTs, ctxTime, speed}
 *   `headTs` is the stream timestamp of the sample at the read head, valid at
 *   context time `ctxTime`; the page uses it to show video frames in step with
 *   the sound.
 *
 * The stream usually arrives at 16 kHz and the page asks for a 16 kHz context,
 * so the read step is 1. When the browser picks another context rate, or the
 * stream changes rate, the read head moves in fractional steps with linear
 * interpolation. Linear interpolation is enough here: the stream is speech
 * band-limited well below either Nyquist, and a polyphase filter would cost
 * latency for no audible gain.
 *
 * Clock drift: the server paces chunks with its own clock, the sound card with
 * another. Rather than letting the buffer slowly fill up (latency) or drain
 * (periodic gaps), the read step is nudged by at most MAX_SPEED_ADJUST in
 * proportion to the smoothed distance from the target fill. A change of a
 * percent or two is inaudible on speech; re-buffering gaps are not.
 */

const CAPACITY_S = 4;            // ring size; older audio is dropped when full
const PREBUFFER_S = 0.1;         // jitter buffer accumulated before (re)starting
const TARGET_S = 0.12;           // fill the drift control steers towards
const MAX_SPEED_ADJUST = 0.02;   // +-2 % playback speed at most
const SPEED_GAIN = 0.1;          // speed change per second of fill error
const FILL_SMOOTHING_S = 1.0;    // time constant of the smoothed fill level
const SKIP_ABOVE_S = 1.0;        // fill beyond this is cut back to TARGET_S at once
const DRAIN_AFTER_S = 0.15;      // start with less than PREBUFFER_S if nothing new arrives
const RAMP_S = 0.004;            // fade in/out so starts and underruns do not click
const STATS_INTERVAL_S = 0.05;

class AvatardPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.srcRate = 0;
    this.buf = null;
    this.cap = 0;
    this.readIdx = 0;
    this.frac = 0;              // fractional read position between readIdx and readIdx+1
    this.count = 0;             // samples in the ring
    this.written = 0;           // samples ever accepted
    this.readTotal = 0;         // samples ever removed (played or dropped)
    this.dropped = 0;
    this.underruns = 0;
    this.overflows = 0;
    this.playing = false;
    this.gain = 0;
    this.last = 0;              // last output sample, decayed to zero on underrun
    this.avgFill = TARGET_S;
    this.speed = 1;
    this.segments = [];         // [{start: written-index of first sample, ts}]
    this.lastWriteTime = 0;
    this.lastStatsTime = -1;
    this.rampStep = 1 / Math.max(1, RAMP_S * sampleRate);
    this.decay = Math.exp(-1 / Math.max(1, RAMP_S * sampleRate));
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === 'pcm') this.append(msg.samples, msg.sampleRate, msg.ts);
    else if (msg.type === 'flush') this.flush();
  }

  setRate(rate) {
    this.flush();
    this.srcRate = rate;
    this.cap = Math.ceil(CAPACITY_S * rate);
    this.buf = new Float32Array(this.cap);
  }

  flush() {
    // Whatever is playing fades out through `last`, so a flush does not click.
    this.dropped += this.count;
    this.readTotal += this.count;
    this.readIdx = 0;
    this.frac = 0;
    this.count = 0;
    this.playing = false;
    this.segments = [];
  }

  discard(n) {
    this.readIdx = (this.readIdx + n) % this.cap;
    this.count -= n;
    this.readTotal += n;
    this.dropped += n;
  }

  append(samples, rate, ts) {
    if (!(rate > 0) || !samples || samples.length === 0) return;
    if (rate !== this.srcRate) this.setRate(rate);
    let n = samples.length;
    let from = 0;
    if (n > this.cap) { from = n - this.cap; n = this.cap; }
    const free = this.cap - this.count;
    if (n > free) { this.discard(n - free); this.overflows++; }
    if (typeof ts === 'number' && isFinite(ts)) {
      this.segments.push({ start: this.written + from, ts: ts + from / rate });
    }
    let w = (this.readIdx + this.count) % this.cap;
    for (let i = from; i < samples.length; i++) {
      this.buf[w] = samples[i];
      if (++w === this.cap) w = 0;
    }
    this.count += n;
    this.written += samples.length;
    this.dropped += from;
    this.lastWriteTime = currentTime;
  }

  headTs() {
    const segs = this.segments;
    while (segs.length > 1 && segs[1].start <= this.readTotal) segs.shift();
    if (segs.length === 0 || segs[0].start > this.readTotal) return null;
    return segs[0].ts + (this.readTotal + this.frac - segs[0].start) / this.srcRate;
  }

  process(inputs, outputs) {
    const out = outputs[0];
    const ch0 = out[0];
    const n = ch0.length;
    const rate = this.srcRate;

    if (rate > 0) {
      const fill = this.count / rate;
      if (fill > SKIP_ABOVE_S) this.discard(this.count - Math.round(TARGET_S * rate));
      if (!this.playing && this.count > 1 &&
          (fill >= PREBUFFER_S || currentTime - this.lastWriteTime >= DRAIN_AFTER_S)) {
        this.playing = true;
        this.gain = 0;
      }
      const alpha = n / sampleRate / FILL_SMOOTHING_S;
      this.avgFill += (this.count / rate - this.avgFill) * alpha;
      const adjust = Math.max(-MAX_SPEED_ADJUST,
        Math.min(MAX_SPEED_ADJUST, (this.avgFill - TARGET_S) * SPEED_GAIN));
      this.speed = 1 + adjust;
    }

    const step = rate > 0 ? (rate / sampleRate) * this.speed : 1;
    const buf = this.buf;
    const cap = this.cap;
    for (let i = 0; i < n; i++) {
      let v;
      if (this.playing && this.count >= 2) {
        const a = buf[this.readIdx];
        const b = buf[this.readIdx + 1 === cap ? 0 : this.readIdx + 1];
        v = (a + (b - a) * this.frac) * this.gain;
        if (this.gain < 1) this.gain = Math.min(1, this.gain + this.rampStep);
        this.frac += step;
        while (this.frac >= 1 && this.count >= 2) {
          this.frac -= 1;
          if (++this.readIdx === cap) this.readIdx = 0;
          this.count--;
          this.readTotal++;
        }
        this.last = v;
      } else {
        if (this.playing) { this.playing = false; this.underruns++; this.frac = 0; }
        this.last *= this.decay;
        if (Math.abs(this.last) < 1e-6) this.last = 0;
        v = this.last;
      }
      ch0[i] = v;
    }
    for (let c = 1; c < out.length; c++) out[c].set(ch0);

    if (currentTime - this.lastStatsTime >= STATS_INTERVAL_S) {
      this.lastStatsTime = currentTime;
      this.port.postMessage({
        type: 'stats',
        written: this.written,
        played: this.readTotal - this.dropped,
        dropped: this.dropped,
        buffered: this.count,
        underruns: this.underruns,
        overflows: this.overflows,
        playing: this.playing,
        headTs: this.playing ? this.headTs() : null,
        ctxTime: currentTime + n / sampleRate,
        speed: this.speed,
      });
    }
    return true;
  }
}

registerProcessor('avatard-player', AvatardPlayer);
