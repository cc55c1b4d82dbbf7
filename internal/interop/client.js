// Shared by both drivers, and run as a classic script in the browser page: it opens
// EventSources by name and reports everything each one fires, in order, through record.
globalThis.sseInterop = (() => {
  const sources = new Map();

  function open(id, url, types, record) {
    const es = new EventSource(url);
    const report = (e) => {
      // A server event named "error" reaches the same listeners as a connection error;
      // only the former is a MessageEvent, so tell them apart by that.
      if (e instanceof MessageEvent) {
        record({ id, kind: 'event', type: e.type, data: e.data, lastEventId: e.lastEventId, readyState: es.readyState });
      } else {
        record({ id, kind: e.type, readyState: es.readyState });
      }
    };
    es.onopen = report;
    es.addEventListener('error', report);
    for (const type of types) es.addEventListener(type, report); // the same listener twice is added once
    sources.set(id, es);
  }

  function close(id) {
    sources.get(id)?.close();
    sources.delete(id);
  }

  // run carries out one command from the Go test; the drivers report when it is done.
  function run(cmd, record) {
    switch (cmd.op) {
      case 'open': return open(cmd.id, cmd.url, cmd.types ?? [], record);
      case 'close': return close(cmd.id);
      default: throw new Error(`unknown op ${cmd.op}`);
    }
  }

  return { run };
})();
