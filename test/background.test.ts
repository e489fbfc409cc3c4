// Fire-and-forget promises (src/background.ts). Node 20 ends the process on
// an unhandled rejection: a rejected close() left bare (`void this.close()`)
// would take the daemon down. background() logs the failure and the process
// goes on; and no bare `void promise` is left in src/.

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';

const srcDir = path.resolve(__dirname, '..', 'src');
const backgroundJs = path.join(srcDir, 'background.js');

/** Runs a script in a fresh node (default unhandled-rejection mode) and returns how it ended. */
function run(script: string): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20000 });
  return { status: r.status, stderr: r.stderr };
}

const later = 'setTimeout(() => { process.stdout.write("still alive"); process.exit(0); }, 50);';

t.test('a bare rejected promise kills node: the failure mode background() exists for', (t) => {
  const r = run(`Promise.reject(new Error('close failed: boom')); ${later}`);
  t.not(r.status, 0, `node exits ${r.status}`);
  t.match(r.stderr, /boom/);
  t.end();
});

t.test('background(): the rejection is logged once at error level and the process survives', (t) => {
  const r = run(
    `const { background } = require(${JSON.stringify(backgroundJs)});
     background(Promise.reject(new Error('boom')), 'closing the frontend connection', { conn: 3 });
     ${later}`,
  );
  t.equal(r.status, 0, 'node exits 0');
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  t.equal(lines.length, 1, `one line: ${r.stderr}`);
  t.match(lines[0] ?? '', /^vublk: error: closing the frontend connection failed conn=3 error=.*boom/);
  t.end();
});

t.test('no bare `void promise` in src/ (every fire-and-forget promise goes through background())', (t) => {
  const bare: string[] = [];
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.js')) {
        fs.readFileSync(p, 'utf8')
          .split('\n')
          .forEach((l, i) => {
            if (/\bvoid\s+[\w.]+\(/.test(l) && !/^\s*\/\//.test(l)) bare.push(`${path.relative(srcDir, p)}:${i + 1}: ${l.trim()}`);
          });
      }
    }
  };
  walk(srcDir);
  t.same(bare, [], 'none');
  t.end();
});
