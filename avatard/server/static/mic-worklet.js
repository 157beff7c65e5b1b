/**
 * avatard microphone worklet: downmix to mono, resample from the context rate
 * to `targetRate` (16 kHz), and post little-endian PCM16 chunks of `chunkMs`.
 *
 * processorOptions: {targetRate = 16000, chunkMs = 40}
 * Messages out (port): {type: 'chunk', pcm: ArrayBuffer (Int16, LE), rms, peak}
 * Messages in (port):  {type: 'flush'}  post what is pending as a short chunk
 *
 * Resampling: a windowed-sinc low-pass at 0.4 x targetRate removes what would
 * alias, then linear interpolation reads the filtered signal at a running
 * fractional position that carries over from one render quantum to the next.
 * Plain decimation (keep every 3rd sample) aliases 8-24 kHz hiss into the
 * speech band and only works for integer ratios such as 48k/16k, not 44.1k;
 * averaging blocks of samples is a poor low-pass. The FIR costs about 60
 * multiply-adds per input sample, nothing for the audio thread.
 */

const CUTOFF_FRACTION = 0.4;   // of targetRate: 6.4 kHz for 16 kHz, below the 8 kHz Nyquist
const TAPS_PER_RATIO = 21;     // filter length grows with the decimation ratio

function designLowpass(cutoff, taps) {
  // cutoff in cycles/sample of the input rate; Blackman window (~74 dB stopband).
  const h = new Float32Array(taps);
  const mid = (taps - 1) / 2;
  let sum = 0;
  for (let i = 0; i < taps; i++) {
    const x = i - mid;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (taps - 1)) +
      0.08 * Math.cos((4 * Math.PI * i) / (taps - 1));
    h[i] = sinc * w;
    sum += h[i];
  }
  for (let i = 0; i < taps; i++) h[i] /= sum;   // unity gain at DC
  return h;
}

class AvatardMic extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.outRate = opts.targetRate || 16000;
    this.step = sampleRate / this.outRate;        // input samples per output sample
    this.chunkLen = Math.max(1, Math.round((this.outRate * (opts.chunkMs || 40)) / 1000));
    if (this.step > 1) {
      const taps = 2 * Math.round((TAPS_PER_RATIO * this.step) / 2) + 1;
      this.fir = designLowpass((CUTOFF_FRACTION * this.outRate) / sampleRate, taps);
    } else {
      this.fir = null;  // upsampling or same rate: nothing above the new Nyquist
    }
    const hist = this.fir ? this.fir.length - 1 : 0;
    this.work = new Float32Array(hist + 128);      // history + current quantum
    this.filtered = new Float32Array(128);
    this.histLen = hist;
    this.pos = 0;        // next output position, in input samples from the quantum start
    this.prev = 0;       // last filtered sample of the previous quantum (index -1)
    this.newChunk();
    this.port.onmessage = (e) => { if (e.data && e.data.type === 'flush') this.emit(); };
  }

  newChunk() {
    this.out = new Int16Array(this.chunkLen);
    this.outIdx = 0;
    this.sumSq = 0;
    this.peak = 0;
  }

  emit() {
    if (this.outIdx === 0) return;
    const n = this.outIdx;
    const pcm = n === this.chunkLen ? this.out : this.out.slice(0, n);
    this.port.postMessage(
      { type: 'chunk', pcm: pcm.buffer, rms: Math.sqrt(this.sumSq / n), peak: this.peak },
      [pcm.buffer]);
    this.newChunk();
  }

  push(v) {
    const s = v > 1 ? 1 : v < -1 ? -1 : v;
    // Int16Array stores in platform order, which is little-endian on every
    // platform a browser runs on; the wire wants LE.
    this.out[this.outIdx++] = s < 0 ? s * 32768 : s * 32767;
    this.sumSq += s * s;
    const a = s < 0 ? -s : s;
    if (a > this.peak) this.peak = a;
    if (this.outIdx === this.chunkLen) this.emit();
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;   // no track connected (yet)
    const n = input[0].length;
    const hist = this.histLen;
    if (this.work.length !== hist + n) {
      const w = new Float32Array(hist + n);
      w.set(this.work.subarray(0, hist));
      this.work = w;
      this.filtered = new Float32Array(n);
    }
    const work = this.work;
    // Downmix into the tail of the work buffer.
    const chans = input.length;
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let c = 0; c < chans; c++) s += input[c][i];
      work[hist + i] = s / chans;
    }
    const f = this.filtered;
    if (this.fir) {
      const h = this.fir;
      const taps = h.length;
      for (let i = 0; i < n; i++) {
        let acc = 0;
        for (let k = 0; k < taps; k++) acc += h[k] * work[i + k];
        f[i] = acc;
      }
    } else {
      f.set(work.subarray(hist, hist + n));
    }
    // Interpolate output samples at positions pos, pos + step, ... while both
    // neighbours are known; index -1 is the previous quantum's last sample.
    let t = this.pos;
    while (t < n - 1) {
      const i = Math.floor(t);
      const frac = t - i;
      const a = i < 0 ? this.prev : f[i];
      const b = f[i + 1];
      this.push(a + (b - a) * frac);
      t += this.step;
    }
    this.pos = t - n;
    this.prev = f[n - 1];
    if (hist > 0) work.copyWithin(0, n, n + hist);
    return true;
  }
}

registerProcessor('avatard-mic', AvatardMic);
