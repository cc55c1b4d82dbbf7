// Driver for the npm eventsource package. It reads one JSON command per line on stdin
// (see client.js) and writes one JSON record per line on stdout; it exits when stdin closes.
import { createInterface } from 'node:readline';
import { EventSource } from 'eventsource';
import './client.js';

globalThis.EventSource = EventSource; // Node 20 has none of its own
const record = (r) => process.stdout.write(JSON.stringify(r) + '\n');

// The Go test bounds the run too; this only keeps a forgotten process from living on.
setTimeout(() => process.exit(3), 5 * 60_000).unref();

for await (const line of createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line);
  try {
    if (cmd.op !== 'goto') sseInterop.run(cmd, record); // no page to load outside a browser
    record({ seq: cmd.seq, kind: 'done' });
  } catch (err) {
    record({ seq: cmd.seq, kind: 'fail', message: String(err) });
  }
}
process.exit(0); // open EventSources would otherwise keep the process alive
