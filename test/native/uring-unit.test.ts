// Builds and runs the unit test of native/uring.cc (test/native/uring-unit.cc)
// under AddressSanitizer + UBSan: a failed io_uring submit must leave no SQE
// that the kernel could later issue with another request's iovecs, and the
// ring must count and cancel its outstanding ops (what a closing connection
// waits for).

import t from 'tap';
import { runAsanUnit } from '../helpers/asan-unit';

t.test('Uring: failed submit drops its SQEs; in-flight count; cancel', (t) => {
  runAsanUnit(t, 'uring-unit', ['test/native/uring-unit.cc', 'native/uring.cc'], ['-l:liburing.a']);
  t.end();
});
