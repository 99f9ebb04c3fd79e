// Runs livekit-client's own E2EE worker (dist/livekit-client.e2ee.worker.mjs)
// under Node 20 with a shared key, as ExternalE2EEKeyProvider.setKey does.
//
//   node lkworker.mjs <worker.mjs> gen   > vectors.json   (fixed vectors)
//   node lkworker.mjs <worker.mjs> run   < request.json   (live cross-check)
//
// request: {"key": hex K, "decrypt": [frame], "encrypt": [frame]},
// frame: {"codec": "h264"|"vp8"|"opus", "type": "key"|"delta"|"", "data": hex}.
// Output: {"decrypted": [hex or null], "encrypted": [hex], "errors": n}.
// Only frames and counts are printed; never the key.
import { pathToFileURL } from 'node:url';
import fs from 'node:fs';

const [workerPath, mode] = process.argv.slice(2);
const out = [];
let errors = 0;
globalThis.self = globalThis;
globalThis.postMessage = (m) => { if (m && m.kind === 'error') errors++; out.push(m); };
globalThis.RTCEncodedAudioFrame = class {};
globalThis.onmessage = null;
await import(pathToFileURL(workerPath).href);
const send = (kind, data) => globalThis.onmessage({ data: { kind, data } });
const tick = () => new Promise((r) => setTimeout(r, 20));

const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => new Uint8Array(Buffer.from(s, 'hex'));
const mime = { h264: 'video/H264', vp8: 'video/VP8', opus: 'audio/opus' };

function frameObj(f, i) {
  const data = unhex(f.data).buffer;
  const meta = { synchronizationSource: 0x1234abcd, payloadType: f.codec === 'opus' ? 111 : 96, mimeType: mime[f.codec] };
  const o = { data, timestamp: 90000 + i * 3000, getMetadata: () => meta };
  if (f.codec !== 'opus') o.type = f.type;
  return o;
}

let track = 0;
async function pipe(op, frames) {
  const results = new Array(frames.length).fill(null);
  let n = 0;
  const readable = new ReadableStream({
    start(c) { frames.forEach((f, i) => c.enqueue(Object.assign(frameObj(f, i), { idx: i }))); c.close(); },
  });
  const writable = new WritableStream({ write(fr) { results[fr.idx] = hex(new Uint8Array(fr.data)); n++; } });
  const codec = frames.length && frames[0].codec !== 'opus' ? frames[0].codec : undefined;
  send(op, { participantIdentity: 'p', trackId: 't' + track++, readableStream: readable, writableStream: writable, codec });
  for (let i = 0; i < 40 && n < frames.length; i++) await tick();
  return results;
}

async function run(req) {
  send('init', { loglevel: 'silent', keyProviderOptions: { sharedKey: true, ratchetSalt: 'LKFrameEncryptionKey', ratchetWindowSize: 0, failureTolerance: -1, keyringSize: 16, keySize: 128 } });
  const material = await crypto.subtle.importKey('raw', unhex(req.key), 'HKDF', false, ['deriveBits', 'deriveKey']);
  send('setKey', { key: material, keyIndex: 0, updateCurrentKeyIndex: true });
  send('enable', { enabled: true, participantIdentity: 'p' });
  await tick();
  const res = { decrypted: [], encrypted: [] };
  // one pipe per codec so each cryptor sees one codec, as on a real track
  for (const [op, key] of [['decode', 'decrypted'], ['encode', 'encrypted']]) {
    const frames = req[key === 'decrypted' ? 'decrypt' : 'encrypt'] || [];
    const got = new Array(frames.length).fill(null);
    for (const codec of ['h264', 'vp8', 'opus']) {
      const idx = frames.map((f, i) => (f.codec === codec ? i : -1)).filter((i) => i >= 0);
      if (!idx.length) continue;
      const r = await pipe(op, idx.map((i) => frames[i]));
      idx.forEach((i, j) => (got[i] = r[j]));
    }
    res[key] = got;
  }
  res.errors = errors;
  return res;
}

// Plain frames for the fixed vectors: deterministic bytes with zero runs so
// that the RBSP escaping is exercised.
function bytes(n, seed) {
  const b = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) { x = (x * 1103515245 + 12345) >>> 0; b[i] = (i % 37 < 3) ? 0 : (x >>> 16) & 0xff; }
  return b;
}
const cat = (...a) => Buffer.concat(a.map((x) => Buffer.from(x)));
function plainFrames() {
  const sps = [0x67, 0x42, 0xc0, 0x1f, 0x8c, 0x8d, 0x40, 0x50, 0x1e, 0xd0, 0x0f, 0x08, 0x84, 0x6a];
  const pps = [0x68, 0xce, 0x3c, 0x80];
  return [
    { codec: 'h264', type: 'key', data: hex(cat([0, 0, 0, 1], sps, [0, 0, 0, 1], pps, [0, 0, 0, 1, 0x65, 0x88, 0x84], bytes(3000, 1))) },
    { codec: 'h264', type: 'key', data: hex(cat([0, 0, 1], sps, [0, 0, 1], pps, [0, 0, 1, 0x65, 0xb8, 0x04], bytes(1200, 2))) },
    { codec: 'h264', type: 'delta', data: hex(cat([0, 0, 0, 1, 0x41, 0x9a, 0x02], bytes(700, 3))) },
    { codec: 'h264', type: 'delta', data: hex(cat([0, 0, 0, 1, 0x41, 0x9a, 0x04], bytes(50, 4), [0, 0, 0, 1, 0x01, 0x9a], bytes(40, 5))) },
    { codec: 'vp8', type: 'key', data: hex(cat([0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01], bytes(2000, 6))) },
    { codec: 'vp8', type: 'delta', data: hex(cat([0x31, 0x0e, 0x00], bytes(400, 7))) },
    { codec: 'opus', type: '', data: hex(cat([0xfc], bytes(120, 8))) },
    { codec: 'opus', type: '', data: hex([0xf8, 0xff, 0xfe]) },
  ];
}

const input = mode === 'gen'
  ? { key: hex(new Uint8Array(32).map((_, i) => i)), encrypt: plainFrames() }
  : JSON.parse(fs.readFileSync(0, 'utf8'));
const res = await run(input);
if (mode === 'gen') {
  const v = input.encrypt.map((f, i) => ({ ...f, lk: res.encrypted[i] }));
  process.stdout.write(JSON.stringify({ generator: 'lkworker.mjs gen, livekit-client 2.23.0', key: input.key, frames: v }, null, 1) + '\n');
} else {
  process.stdout.write(JSON.stringify(res) + '\n');
}
process.exit(0);
