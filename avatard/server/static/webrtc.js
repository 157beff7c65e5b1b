/**
 * WebRTC media for the page (docs/protocol.md, "WebRTC"): the avatar as Opus + VP8/H.264 in a <video>
 * element, the microphone back as Opus with the browser's echo cancellation, noise suppression and gain
 * control. Signaling rides the page's WebSocket (webrtc_offer -> webrtc_answer, webrtc_state, webrtc_close);
 * transcripts, status, gestures and text stay there too.
 *
 * The page offers (receive-only video, send-receive audio whose sending track is attached when Talk is
 * pressed, so no renegotiation is ever needed). The daemon does not trickle ICE, so the offer is sent once
 * gathering has completed (host candidates only without ICE servers); the page prepares the offer and
 * gathers while its WebSocket connects, which took 150-200 ms off the first picture (bench/webrtc.py).
 *
 * Which transport (chooseTransport): ?transport=ws|webrtc forces one; otherwise WebRTC when the browser has
 * RTCPeerConnection and the page is not on a loopback address (the daemon's ICE library offers no loopback
 * candidates, and on the same machine the binary stream costs nothing). An automatic WebRTC attempt that
 * fails (the server says webrtc_unavailable, no connection within NEGOTIATION_TIMEOUT_MS, ICE fails later)
 * falls back to the binary WebSocket stream by itself.
 */

export const NEGOTIATION_TIMEOUT_MS = 8000;   // offer sent -> first picture; past it, fall back
export const GATHER_TIMEOUT_MS = 3000;        // ICE gathering; host candidates take milliseconds

const LOOPBACK = /^(localhost|127(\.\d+){3}|\[?::1\]?)$/i;

/** {transport: 'ws'|'webrtc', forced: bool, reason} for this page load. */
export function chooseTransport(loc = window.location, hasRtc = typeof RTCPeerConnection === 'function') {
  const forced = new URLSearchParams(loc.search).get('transport');
  if (forced === 'ws' || forced === 'webrtc') return { transport: forced, forced: true, reason: '?transport' };
  if (!hasRtc) return { transport: 'ws', forced: false, reason: 'this browser has no WebRTC' };
  if (LOOPBACK.test(loc.hostname)) return { transport: 'ws', forced: false, reason: 'loopback page' };
  return { transport: 'webrtc', forced: false, reason: 'default' };
}

function gathered(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { clearTimeout(timer); pc.removeEventListener('icegatheringstatechange', check); resolve(); };
    const check = () => { if (pc.iceGatheringState === 'complete') done(); };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

/**
 * One peer connection. `onPicture(width, height)` runs for every frame the <video> shows,
 * `onUp()` once with the first one, `onDown(reason)` once when the peer is given up (then it is closed).
 */
export class RtcMedia {
  constructor({ send, video, onUp, onDown, onPicture }) {
    this.send = send;
    this.video = video;
    this.onUp = onUp;
    this.onDown = onDown;
    this.onPicture = onPicture;
    this.pc = null;
    this.audioTx = null;
    this.up = false;
    this.closed = false;
    this.timer = null;
    this.ready = null;
    this.peer = null;
    this.timeline = {};   // performance.now() of each step: prepare, gathered, start, offer, answer, connected, picture
  }

  #mark(step) { this.timeline[step] ??= performance.now(); }

  /** Create the connection and its offer, and gather candidates: done while the WebSocket connects. */
  prepare() {
    this.#mark('prepare');
    const pc = this.pc = new RTCPeerConnection({ iceServers: [] });
    pc.addTransceiver('video', { direction: 'recvonly' });
    this.audioTx = pc.addTransceiver('audio', { direction: 'sendrecv' });
    const stream = new MediaStream();
    pc.ontrack = (e) => {
      stream.addTrack(e.track);
      this.video.srcObject = stream;
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'connected') this.#mark('connected');
      if (pc.connectionState === 'failed') this.fail('ICE connection failed');
    };
    this.ready = (async () => {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, GATHER_TIMEOUT_MS);
      this.#mark('gathered');
    })();
    this.ready.catch(() => {});   // reported by offer()
  }

  /** Send the offer (once the WebSocket is up); the answer comes as a webrtc_answer message. */
  async offer() {
    if (!this.pc) this.prepare();
    this.#mark('start');
    this.timer = setTimeout(() => this.fail('no picture within ' + NEGOTIATION_TIMEOUT_MS / 1000 + ' s'),
      NEGOTIATION_TIMEOUT_MS);
    this.#watchFrames();
    await this.ready;
    if (this.closed) return;
    this.send({ type: 'webrtc_offer', data: { sdp: this.pc.localDescription.sdp } });
    this.#mark('offer');
  }

  #watchFrames() {
    const v = this.video;
    if (!v.requestVideoFrameCallback) return;
    const onFrame = (now, meta) => {
      if (this.closed) return;
      if (!this.up) {
        this.up = true;
        this.#mark('picture');
        clearTimeout(this.timer);
        this.onUp();
      }
      this.onPicture(meta.width, meta.height, meta);
      v.requestVideoFrameCallback(onFrame);
    };
    v.requestVideoFrameCallback(onFrame);
  }

  async answer(sdp, peer) {
    if (this.closed) return;
    this.peer = peer;   // the server's name for this peer: webrtc_state messages about others are old news
    this.#mark('answer');
    try {
      await this.pc.setRemoteDescription({ type: 'answer', sdp });
    } catch (err) {
      this.fail(`bad answer: ${err.message || err}`);
    }
  }

  /** The server's webrtc_state: its side of ``peer`` failed or closed. */
  serverState(state, peer) {
    if (peer !== this.peer) return;
    if (state === 'failed' || state === 'closed') this.fail(`server: ${state}`);
  }

  /** The microphone's track (or null to stop sending): no renegotiation, the m-line is there already. */
  setMic(track) {
    if (this.closed || !this.audioTx) return Promise.resolve();
    return this.audioTx.sender.replaceTrack(track);
  }

  fail(reason) {
    if (this.closed) return;
    this.close(true);
    this.onDown(reason);
  }

  close(tellServer) {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    if (tellServer) this.send({ type: 'webrtc_close' });
    this.pc?.close();
    this.video.srcObject = null;
  }
}
