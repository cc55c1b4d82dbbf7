// Driver for the examples' browser tests: headless Chromium through playwright-core, with
// named pages (tabs) that the Go test loads and works like a user. Usage:
// node driver.mjs USER_DATA_DIR. It reads one JSON command per line on stdin and answers each
// with {seq, value} or {seq, error}; whenever a page shows a problem (an uncaught exception, a
// console error, a failed request or response, an EventSource error) it writes
// {problem, page}. It exits when stdin closes.
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const [userDataDir] = process.argv.slice(2);
const write = (r) => process.stdout.write(JSON.stringify(r) + '\n');

// The Go test bounds the run too; this only keeps a forgotten browser from living on.
setTimeout(() => process.exit(3), 5 * 60_000).unref();

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium', // Debian's; never a downloaded browser
  headless: true,
  viewport: { width: 600, height: 420 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});

const pages = new Map(); // name → Page
const names = new Map(); // Page → name
const problem = (page, message) => write({ problem: message, page: names.get(page) ?? '' });
// short keeps a long URL in a problem readable.
const short = (url) => (url.length <= 120 ? url : `${url.slice(0, 100)}…(${url.length} bytes)`);

// EventSource reports a failed or lost connection only to the page's own listeners: wrap it
// so that every error reaches the test too, whatever the page does with it.
await context.exposeBinding('sseTestProblem', ({ page }, message) => problem(page, message));
await context.addInitScript(() => {
  const Native = window.EventSource;
  window.EventSource = class EventSource extends Native {
    constructor(url, init) {
      super(url, init);
      this.addEventListener('error', (e) => {
        if (e instanceof MessageEvent) return; // an event the server named "error"
        const state = ['connecting', 'open', 'closed'][this.readyState];
        // short's work, in the page.
        const url = this.url.length <= 120 ? this.url : `${this.url.slice(0, 100)}…(${this.url.length} bytes)`;
        window.sseTestProblem(`EventSource ${url}: error, now ${state}`);
      });
    }
  };
});

function watch(page) {
  page.on('pageerror', (err) => problem(page, `uncaught ${err}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const { url } = msg.location();
    problem(page, `console.error: ${msg.text()}` + (url ? ` (${short(url)})` : ''));
  });
  page.on('requestfailed', (req) => {
    const error = req.failure()?.errorText;
    // The page's own doing: EventSource.close, say, while the response is still coming.
    if (error === 'net::ERR_ABORTED') return;
    problem(page, `${req.method()} ${short(req.url())}: ${error}`);
  });
  page.on('response', (resp) => {
    if (resp.status() >= 400) problem(page, `${resp.request().method()} ${short(resp.url())}: status ${resp.status()}`);
  });
  page.on('crash', () => problem(page, 'the page crashed'));
}

async function open(name) {
  let page = pages.get(name);
  if (!page) {
    // The first page is the blank one the browser starts with.
    page = pages.size === 0 && context.pages().length > 0 ? context.pages()[0] : await context.newPage();
    pages.set(name, page);
    names.set(page, name);
    watch(page);
  }
  return page;
}

function pageNamed(name) {
  const page = pages.get(name);
  if (!page) throw new Error(`no page ${name}`);
  return page;
}

// Each operation returns a JSON value for the test, or throws.
const ops = {
  // Answered once the browser has started, since commands are read only then.
  started: () => null,
  // Loads url in the page named page, which it opens if it is new.
  async goto({ page, url }) {
    const resp = await (await open(page)).goto(url);
    if (!resp?.ok()) throw new Error(`GET ${url}: status ${resp?.status()}`);
  },
  fill: ({ page, selector, value }) => pageNamed(page).locator(selector).fill(value),
  press: ({ page, selector, key }) => pageNamed(page).locator(selector).press(key),
  // expr is a JavaScript expression, evaluated in the page; its value must be JSON.
  eval: ({ page, expr }) => pageNamed(page).evaluate(expr),
  // Waits until expr is truthy in the page, and returns its value.
  async wait({ page, expr, timeout }) {
    const handle = await pageNamed(page).waitForFunction(expr, null, { timeout, polling: 20 });
    return handle.jsonValue();
  },
  async screenshot({ page }) {
    return (await pageNamed(page).screenshot()).toString('base64');
  },
};

async function run(cmd) {
  try {
    const op = ops[cmd.op];
    if (!op) throw new Error(`unknown op ${cmd.op}`);
    write({ seq: cmd.seq, value: (await op(cmd)) ?? null });
  } catch (err) {
    write({ seq: cmd.seq, error: String(err) });
  }
}

// The test sends a command once the one before is answered; it closes stdin when it is done,
// or when it has failed, in which case a command may still be waiting: closing the browser
// ends it at once.
for await (const line of createInterface({ input: process.stdin })) run(JSON.parse(line));
await context.close();
