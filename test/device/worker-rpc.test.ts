// The main thread's calls into a data-plane worker (src/device/worker-rpc.ts),
// against a real worker thread: answers and errors come back in order, and a
// worker that does not answer in time is dead from then on, so its late
// reply can never answer a later call.

import t from 'tap';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { RpcClient } from '../../src/device/worker-rpc';

const rpcModule = path.join(__dirname, '..', '..', 'src', 'device', 'worker-rpc.js');

function startWorker(rpc: RpcClient): Worker {
  const code = `
    const { workerData } = require('node:worker_threads');
    const { serveRpc } = require(${JSON.stringify(rpcModule)});
    serveRpc(workerData.end, {
      add: (a, b) => a + b,
      fail: () => { throw new Error('refused by the worker'); },
      stall: (ms) => { const end = Date.now() + ms; while (Date.now() < end); return 'late'; },
    });
  `;
  const w = new Worker(code, { eval: true, workerData: { end: rpc.end }, transferList: [rpc.end.port] });
  rpc.attach(w, () => undefined);
  return w;
}

t.test('calls answer in order; a worker error comes back as an Error', async (t) => {
  const rpc = new RpcClient('test worker');
  const w = startWorker(rpc);
  t.teardown(() => w.terminate());
  t.equal(rpc.callWithin(10_000, 'add', 2, 3), 5, 'the first call waits for the worker to start');
  t.equal(rpc.call('add', 40, 2), 42, 'a second call');
  t.throws(() => rpc.call('fail'), /refused by the worker/, 'the worker error');
  t.throws(() => rpc.call('nope'), /no data-plane method nope/, 'an unknown method');
  t.equal(rpc.call('add', 1, 1), 2, 'calls still work after errors');
  t.equal(rpc.isDead, false, 'alive');
});

t.test('a call the worker does not answer in time kills the client', async (t) => {
  const rpc = new RpcClient('slow worker');
  const w = startWorker(rpc);
  t.teardown(() => w.terminate());
  t.equal(rpc.callWithin(10_000, 'add', 1, 2), 3, 'started');
  t.throws(
    () => rpc.callWithin(100, 'stall', 500),
    /slow worker did not answer stall within 100 ms/,
    'the timeout names the worker and the call',
  );
  t.equal(rpc.isDead, true, 'the client is dead');
  await new Promise((resolve) => setTimeout(resolve, 600)); // the late reply arrives meanwhile
  t.throws(() => rpc.call('add', 1, 1), /did not answer stall/, 'later calls fail at once with the reason, not with the late reply');
});
