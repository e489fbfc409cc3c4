import t from 'tap';
import { native } from '../../src/native/binding';
import { checkNativeLayout, layoutPairs } from '../../src/native/layout-check';

t.test('the handler and the addon agree on the shared-array layout', (t) => {
  t.doesNotThrow(() => checkNativeLayout());
  t.end();
});

t.test('every shared number is compared: changing any one on the native side fails', (t) => {
  const c = native.constants as unknown as Record<string, number>;
  const names = layoutPairs().map(([name]) => name);
  for (const required of ['FIXED_CHUNK', 'MAX_REQUEST_IOVS', 'IOV_MAX', 'MAX_QUEUES', 'HEADER_BYTES']) {
    t.ok(names.includes(required), `${required} is compared`);
  }
  const nativeNames: Record<string, string> = { MAX_REQUEST_IOVS: 'MAX_CHAIN_SEGS' };
  for (const name of names) {
    const key = nativeNames[name] ?? name;
    const wrong = { ...c, [key]: (c[key] as number) + 1 } as unknown as typeof native.constants;
    t.throws(() => checkNativeLayout(wrong), new RegExp(`\\b${name} \\(js `), `${name} differing is refused`);
  }
  t.end();
});

t.test('a layout that differs on one side fails loudly, naming the constant', (t) => {
  const c = native.constants as unknown as Record<string, number>;
  const saved = c.OP_STRIDE as number;
  c.OP_STRIDE = saved + 1;
  try {
    t.throws(() => checkNativeLayout(), /OP_STRIDE \(js 6, native 7\)/);
  } finally {
    c.OP_STRIDE = saved;
  }
  t.end();
});

t.test('every shared number is compared: changing any one on the native side fails', (t) => {
  const c = native.constants as unknown as Record<string, number>;
  const names = layoutPairs().map(([name]) => name);
  for (const required of ['FIXED_CHUNK', 'MAX_REQUEST_IOVS', 'IOV_MAX', 'MAX_QUEUES', 'HEADER_BYTES']) {
    t.ok(names.includes(required), `${required} is compared`);
  }
  const nativeNames: Record<string, string> = { MAX_REQUEST_IOVS: 'MAX_CHAIN_SEGS' };
  for (const name of names) {
    const key = nativeNames[name] ?? name;
    const wrong = { ...c, [key]: (c[key] as number) + 1 } as unknown as typeof native.constants;
    t.throws(() => checkNativeLayout(wrong), new RegExp(`\\b${name} \\(js `), `${name} differing is refused`);
  }
  t.end();
});
