// Every relative link in README.md and docs/*.md points to a file that
// exists and, with a #fragment, to a heading of that file (GitHub's anchors).

import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';

const root = path.resolve(__dirname, '..', '..', '..');
const docsDir = path.join(root, 'docs');
const files = [
  'README.md',
  ...fs
    .readdirSync(docsDir)
    .filter((f) => f.endsWith('.md'))
    .map((f) => path.join('docs', f)),
];

/** The text outside fenced code blocks, where links and headings count. */
function prose(text: string): string {
  return text.replace(/^[ \t]*```[^\n]*\n[\s\S]*?^[ \t]*```[^\n]*$/gm, '');
}

/** GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens, -N for repeats. */
function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const m of prose(text).matchAll(/^#{1,6}\s+(.*?)\s*#*\s*$/gm)) {
    const base = (m[1] ?? '')
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/\s/g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

for (const file of files) {
  t.test(file, async (t) => {
    const text = fs.readFileSync(path.join(root, file), 'utf8');
    const links = [...prose(text).matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1] ?? '');
    const local = links.filter((l) => !/^[a-z][a-z0-9+.-]*:/i.test(l));
    t.ok(local.length > 0, 'has relative links');
    for (const link of local) {
      const [target = '', fragment] = link.split('#', 2);
      const resolved = target === '' ? path.join(root, file) : path.resolve(path.dirname(path.join(root, file)), target);
      if (!fs.existsSync(resolved)) {
        t.fail(`${link}: ${path.relative(root, resolved)} does not exist`);
        continue;
      }
      if (fragment === undefined) continue;
      const ok = anchors(fs.readFileSync(resolved, 'utf8')).has(fragment);
      t.ok(ok, `${link}: heading #${fragment} in ${path.relative(root, resolved)}`);
    }
  });
}
