// RwPlanner.plan: planRw plus the split-or-bounce fallback (a middle too long
// for one op is split at host-aligned cuts, else bounced whole).
import t from 'tap';
import { ELEM, RwPlan, RwPlanner, type HostRules } from '../../src/align/rw-plan';

const A = 4096;
const RULES: HostRules = { offsetAlign: A, memAlign: 512, lenAlign: 512 };
const MAX_OPS = 16;

/** Guest iovecs of these lengths, back to back in buffer 0 (every address M-aligned). */
function iovs(lens: readonly number[]): Float64Array {
  const out = new Float64Array(lens.length * ELEM);
  let at = 0;
  lens.forEach((len, i) => {
    out.set([0, at, len], i * ELEM);
    at += len;
  });
  return out;
}

function plan(lens: readonly number[]): RwPlan {
  const planner = new RwPlanner(RULES, () => 0, MAX_OPS, lens.length + 2);
  const p = new RwPlan(lens.length);
  const len = lens.reduce((a, b) => a + b, 0);
  planner.plan(p, 0, len, true, iovs(lens), lens.length);
  return p;
}

t.test('a middle with aligned cuts stays split', (t) => {
  const p = plan(new Array<number>(2048).fill(512));
  t.equal(p.split, true);
  t.equal(p.midBounce, false);
  t.equal(p.bounceLen, 0, 'nothing bounced');
  t.end();
});

t.test('no A-aligned cut within IOV_MAX elements: the middle is bounced', (t) => {
  const p = plan([512, ...new Array<number>(1100).fill(A), 3584]);
  t.equal(p.split, false);
  t.equal(p.midBounce, true);
  t.equal(p.collapse, 0);
  t.equal(p.midOff, 0, 'the middle buffer is the whole allocation');
  t.equal(p.bounceLen, p.midEnd - p.midStart);
  t.end();
});

t.test('more ops than a slot may have: the middle is bounced', (t) => {
  const p = plan(new Array<number>(1024 * MAX_OPS + 8).fill(512));
  t.equal(p.split, false);
  t.equal(p.midBounce, true);
  t.equal(p.bounceLen, p.midEnd - p.midStart);
  t.end();
});
