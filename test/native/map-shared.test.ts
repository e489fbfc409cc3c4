// mapShared (the in-repo frontend's view of guest memory) refuses a mapping
// larger than V8 takes as one ArrayBuffer with a RangeError. Before, Node ran
// the buffer's finalizer when V8 refused it and node-addon-api freed it again:
// the process died of a double free.

import t from 'tap';
import { native } from '../../src/native/binding';

t.test('a 5 GiB mapping is refused, the process lives, 4 GiB still maps', (t) => {
  const GiB = 2 ** 30;
  const fd = native.memfdCreate('vublk-test-map', 5 * GiB);
  t.teardown(() => native.closeFd(fd));
  t.throws(() => native.mapShared(fd, 5 * GiB, 0), /at most 4 GiB/);
  t.equal(native.mapShared(fd, 4 * GiB, 0).byteLength, 4 * GiB);
  t.end();
});
