// The house rules for source files: every file in src/ and native/ opens with a
// comment on its job, and none outgrows its limit (450 lines in src/, 500 in native/).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';

const root = path.resolve(__dirname, '..', '..');

interface Tree {
  dir: string;
  exts: readonly string[];
  maxLines: number;
}

const TREES: readonly Tree[] = [
  { dir: 'src', exts: ['.ts'], maxLines: 450 },
  { dir: 'native', exts: ['.cc', '.h'], maxLines: 500 },
];

function filesUnder(dir: string, exts: readonly string[]): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(root, dir), { withFileTypes: true })) {
    const rel = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(rel, exts));
    else if (exts.some((x) => e.name.endsWith(x))) out.push(rel);
  }
  return out.sort();
}

/** The first line that is not blank, a shebang or 'use strict'. */
function openingLine(text: string): string {
  for (const line of text.split('\n')) {
    const s = line.trim();
    if (s === '' || s.startsWith('#!') || /^['"]use strict['"];?$/.test(s)) continue;
    return s;
  }
  return '';
}

function opensWithComment(text: string): boolean {
  const first = openingLine(text);
  return first.startsWith('//') || first.startsWith('/*');
}

function lineCount(text: string): number {
  return text.endsWith('\n') ? text.split('\n').length - 1 : text.split('\n').length;
}

for (const tree of TREES) {
  t.test(`${tree.dir}/: each file opens with its job and stays under ${tree.maxLines} lines`, (t) => {
    const files = filesUnder(tree.dir, tree.exts);
    t.ok(files.length > 10, `found the ${tree.dir}/ files (${files.length})`);
    const silent: string[] = [];
    const long: string[] = [];
    for (const f of files) {
      const text = fs.readFileSync(path.join(root, f), 'utf8');
      if (!opensWithComment(text)) silent.push(`${f}: ${openingLine(text)}`);
      const n = lineCount(text);
      if (n > tree.maxLines) long.push(`${f}: ${n} lines`);
    }
    t.same(silent, [], 'files that do not open with a comment on their job');
    t.same(long, [], `files over ${tree.maxLines} lines`);
    t.end();
  });
}

t.test('the checks bite', (t) => {
  t.notOk(opensWithComment("import t from 'tap';\n// late comment\n"), 'an import first is not a comment');
  t.ok(opensWithComment("#!/usr/bin/env node\n'use strict';\n// Runs things.\n"), 'a shebang and use strict are skipped');
  t.ok(opensWithComment('/**\n * Job.\n */\n#include <x>\n'), 'a block comment counts');
  t.equal(lineCount('a\nb\n'), 2);
  t.end();
});
