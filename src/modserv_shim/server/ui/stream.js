// Server-Sent Events over fetch(): EventSource cannot send an Authorization header, so the stream is read
// and parsed here (fields id, event, data; blank line ends a message; ':' lines are comments), and a dropped
// stream is opened again with Last-Event-ID.  A server that answers JSON instead of a stream (one without the
// event stream) gets the caller's polling fallback.

import { authHeaders, needToken } from './api.js';
import { sleep } from './dom.js';

export function parseBlock(block) {
  const msg = { id: null, event: 'message', data: [] };
  let any = false;
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') { msg.data.push(value); any = true; }
    else if (field === 'event') { msg.event = value || 'message'; any = true; }
    else if (field === 'id') { msg.id = value; any = true; }
  }
  if (!any) return null;
  msg.data = msg.data.join('\n');
  return msg;
}

async function* messages(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      // CR LF and CR end lines too; a CR at the very end may be the first half of a CR LF: keep it for later
      const tail = buf.endsWith('\r') ? '\r' : '';
      buf = (tail ? buf.slice(0, -1) : buf).replace(/\r\n?/g, '\n') + tail;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const msg = parseBlock(buf.slice(0, i));
        buf = buf.slice(i + 2);
        if (msg) yield msg;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

// Follow `path` as a stream until `isDone()` or `signal` aborts.  onEvent(type, data, id) gets each message
// (data parsed as JSON when it is JSON).  Returns 'stream' when it streamed, 'json' when the server answered
// something other than a stream (the caller then polls).
export async function follow(path, { onEvent, onOpen, isDone, signal }) {
  let lastId = null;
  let streamed = false;
  while (!signal.aborted) {
    let r;
    try {
      const headers = authHeaders({ Accept: 'text/event-stream', 'Cache-Control': 'no-cache' });
      if (lastId !== null) headers['Last-Event-ID'] = lastId;
      r = await fetch(path, { headers, signal, cache: 'no-store' });
    } catch {
      if (signal.aborted) break;
      await sleep(1000, signal);
      continue;
    }
    const ctype = r.headers.get('content-type') || '';
    if (r.status === 401) {
      let msg = null;
      try { msg = (await r.json()).message; } catch { msg = null; }
      await needToken(msg);
      continue;
    }
    if (!r.ok || !ctype.startsWith('text/event-stream')) {
      try { await r.body?.cancel(); } catch { /* nothing to cancel */ }
      if (streamed) { await sleep(1000, signal); continue; } // it streamed before: a passing error
      return 'json';
    }
    streamed = true;
    onOpen?.();
    try {
      for await (const msg of messages(r.body)) {
        if (msg.id !== null) lastId = msg.id;
        let data = msg.data;
        try { data = JSON.parse(msg.data); } catch { /* plain text */ }
        onEvent(msg.event, data, msg.id);
      }
    } catch {
      if (signal.aborted) break;
    }
    if (isDone?.()) break;
    await sleep(500, signal);
  }
  return 'stream';
}
