import t from 'tap';
import { native } from '../../src/native/binding';
import { checkNativeLayout } from '../../src/native/layout-check';

t.test('the handler and the addon agree on the shared-array layout', (t) => {
  t.doesNotThrow(() => checkNativeLayout());
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
