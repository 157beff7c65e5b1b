// The broadcast through Janus: Janus's HTTP API spoken directly (no client library), WebRTC to play it.
// Flow (janus_streaming.c docs, "Streaming API"): POST {janus:create} -> session; POST /<session>
// {janus:attach, plugin:janus.plugin.streaming} -> handle; POST /<session>/<handle> {janus:message,
// body:{request:watch, id}}; the plugin's offer comes as an event on GET /<session> (long poll, which
// also keeps the session alive: Janus drops a session after 60 s without requests); answer it with
// body {request:start} and the jsep answer. Query: ?janus=URL (default: this host, Janus's port 8088),
// ?mountpoint=ID (default 8765, avatard's), ?pin=, and ?avatard=host:port&token= for the transcripts.
const q = new URLSearchParams(location.search);
const janus = (q.get('janus') || `${location.protocol}//${location.hostname}:8088/janus`).replace(/\/$/, '');
const mountpoint = Number(q.get('mountpoint') || 8765);
const $ = (id) => document.getElementById(id);
const show = (id, text, color) => { $(id).dataset.color = color; $(id).querySelector('.label').textContent = text; };
let tx = 0;
let generation = 0;  // each (re)start of watch(); an older one stops by itself

async function api(path, body) {
  const r = await fetch(janus + path, { method: 'POST', body: JSON.stringify({ ...body, transaction: `w${++tx}` }) });
  const reply = await r.json();
  if (reply.janus === 'error') throw new Error(reply.error.reason);
  return reply;
}

async function watch(mine) {
  const session = (await api('', { janus: 'create' })).data.id;
  const handle = (await api(`/${session}`, { janus: 'attach', plugin: 'janus.plugin.streaming' })).data.id;
  const pc = window.pc = new RTCPeerConnection({ iceServers: [] });
  pc.ontrack = (ev) => { $('video').srcObject = ev.streams[0] || new MediaStream([ev.track]); };
  pc.onconnectionstatechange = () => {
    const ok = pc.connectionState === 'connected';
    show('state', ok ? 'Watching' : pc.connectionState, ok ? 'green' : 'amber');
    if (pc.connectionState === 'failed' && mine === generation) restart(new Error('connection failed'));
  };
  const body = { request: 'watch', id: mountpoint, ...(q.get('pin') ? { pin: q.get('pin') } : {}) };
  await api(`/${session}/${handle}`, { janus: 'message', body });
  for (let alive = true; alive && mine === generation;) {      // long poll: events (the offer, hangups) and keepalive in one
    const events = await (await fetch(`${janus}/${session}?maxev=5&rid=${Date.now()}`)).json();
    for (const ev of [].concat(events)) {
      const data = ev.plugindata?.data || {};
      if (ev.janus === 'error') throw new Error(ev.error?.reason || 'Janus error');  // e.g. 458: Janus restarted
      if (ev.janus === 'event' && data.error) throw new Error(data.error);
      if (ev.janus === 'event' && ev.jsep?.type === 'offer') {
        await pc.setRemoteDescription(ev.jsep);
        await pc.setLocalDescription(await pc.createAnswer());
        await api(`/${session}/${handle}`, { janus: 'message', body: { request: 'start' }, jsep: pc.localDescription });
      }
      if (ev.janus === 'hangup' || ev.janus === 'detached' || data.result?.status === 'stopped') alive = false;
    }
  }
  if (mine === generation) throw new Error('the broadcast ended');
}

function start() {
  const mine = ++generation;
  watch(mine).catch((error) => { if (mine === generation) restart(error); });
}

function restart(error) {
  show('state', `Janus: ${error.message}; retrying`, 'red');
  generation++;
  window.pc?.close();
  setTimeout(start, 2000);
}

$('sound').onclick = () => { $('video').muted = false; $('sound').hidden = true; };

// Status and transcripts from avatard itself, when it is reachable (this page may be served by Janus's web server).
function transcripts() {
  const host = q.get('avatard') || (location.port === '8088' ? null : location.host);
  if (!host) return;
  const token = q.get('token') ? `?token=${encodeURIComponent(q.get('token'))}` : '';
  const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${host}/ws${token}`);
  ws.onopen = () => ws.send(JSON.stringify({ type: 'control', data: { command: 'subscribe', params: { video: false, audio: false } } }));
  ws.onmessage = (ev) => {
    if (typeof ev.data !== 'string') return;
    const { type, data } = JSON.parse(ev.data);
    if (type === 'status') show('avatard-state', data.status, data.status === 'speaking' ? 'green' : 'grey');
    if (type === 'transcription' && data.is_final) {
      const line = document.createElement('div');
      line.className = `msg ${data.role === 'user' ? 'user' : 'assistant'}`;
      line.append(Object.assign(document.createElement('p'), { textContent: data.text }));
      $('transcript').append(line);
    }
  };
  ws.onclose = () => { show('avatard-state', 'avatard unreachable', 'grey'); setTimeout(transcripts, 5000); };
}

start();
transcripts();
