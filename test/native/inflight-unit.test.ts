// Builds and runs the unit test of the inflight region
// (test/native/inflight-unit.cc: native/inflight.cc through
// native/split-virtqueue.cc) under AddressSanitizer + UBSan: a SIGKILL at
// every point of the completion publish is recovered from, a stale region
// keeps the heads it marks, bad regions are refused, and a head made
// available twice is a violation.

import t from 'tap';
import { runAsanUnit } from '../helpers/asan-unit';

t.test('inflight region: crash points, recovery, bad regions', (t) => {
  const out = runAsanUnit(t, 'inflight-unit', [
    'test/native/inflight-unit.cc',
    'native/inflight.cc',
    'native/crash-point.cc',
    'native/split-virtqueue.cc',
    'native/guest-memory.cc',
  ]);
  t.match(out, /^ok inflight-cleared: pop delivers/m, 'the last crash point was recovered from');
  t.end();
});
