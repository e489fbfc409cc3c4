// Runs the dependency-cruiser rules (.dependency-cruiser.cjs) over src/: no import cycles, and
// blk/ + align/ never import native/; a fixture tree with one of each proves the rules bite.
import t from 'tap';
import { execFile } from 'node:child_process';
import path from 'node:path';

const root = path.resolve(__dirname, '..', '..');
const depcruise = path.join(root, 'node_modules', 'dependency-cruiser', 'bin', 'dependency-cruise.mjs');

interface Violation {
  rule: { name: string };
  from: string;
  to: string;
  cycle?: { name: string }[];
}

// The CLI, not the API: the API is ESM-only and these tests compile to CommonJS.
function cruise(dir: string): Promise<Violation[]> {
  const args = [depcruise, '--config', '.dependency-cruiser.cjs', '--output-type', 'json', dir];
  return new Promise((resolve, reject) => {
    execFile(process.execPath, args, { cwd: root, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      // depcruise exits with the number of errors found; only unreadable output is a failure here.
      try {
        const out = JSON.parse(stdout) as { summary: { violations: Violation[] } };
        resolve(out.summary.violations);
      } catch {
        reject(err ?? new Error(`depcruise printed no JSON: ${stderr}`));
      }
    });
  });
}

function describe(v: Violation): string {
  const cycle = v.cycle ? ` (${v.cycle.map((c) => c.name).join(' -> ')})` : '';
  return `${v.rule.name}: ${v.from} -> ${v.to}${cycle}`;
}

t.test('src/ keeps the layering rules', async (t) => {
  const found = await cruise('src');
  t.same(found.map(describe), [], 'no cycles, no blk/align -> native imports');
});

t.test('the rules report a deliberate cycle and a blk -> native import', async (t) => {
  const fixture = 'test/fixtures/layering/src';
  const found = await cruise(fixture);
  const rules = found.map((v) => v.rule.name).sort();
  t.same(rules, ['no-circular', 'request-path-not-native'], found.map(describe).join('\n'));
  const native = found.find((v) => v.rule.name === 'request-path-not-native');
  t.equal(native?.from, `${fixture}/blk/handler.ts`);
  t.equal(native?.to, `${fixture}/native/binding.ts`);
  const cycle = found.find((v) => v.rule.name === 'no-circular');
  t.ok(cycle?.from.startsWith(fixture) && cycle.to.startsWith(fixture), 'the cycle is the type-only one in the fixture');
});
