// Driver for headless Chromium's native EventSource, through playwright-core. Usage:
// node chromium.mjs USER_DATA_DIR. It reads one JSON command per line on stdin: "goto" loads
// a page of the test server (EventSources must be same-origin), the others run in the page
// (see client.js). It writes one JSON record per line on stdout and exits when stdin closes.
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const [userDataDir] = process.argv.slice(2);
const record = (r) => process.stdout.write(JSON.stringify(r) + '\n');

// The Go test bounds the run too; this only keeps a forgotten browser from living on.
setTimeout(() => process.exit(3), 5 * 60_000).unref();

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium', // Debian's; never a downloaded browser
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const page = context.pages()[0] ?? (await context.newPage());
await page.exposeFunction('record', record);
page.on('pageerror', (err) => record({ kind: 'fail', message: `page: ${err}` }));
const client = fileURLToPath(new URL('client.js', import.meta.url));

for await (const line of createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line);
  try {
    if (cmd.op === 'goto') {
      await page.goto(cmd.url);
      await page.addScriptTag({ path: client });
    } else {
      await page.evaluate((cmd) => sseInterop.run(cmd, window.record), cmd);
    }
    record({ seq: cmd.seq, kind: 'done' });
  } catch (err) {
    record({ seq: cmd.seq, kind: 'fail', message: String(err) });
  }
}
await context.close();
