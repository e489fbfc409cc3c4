// The repository's root directory, found from this file (works from test/helpers/
// and from the compiled dist/test/helpers/).
import * as fs from 'node:fs';
import * as path from 'node:path';

let cachedRoot: string | undefined;

function findUp(start: string): string | undefined {
  let dir = path.resolve(start);
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

/** Repo root: nearest ancestor of this file that holds a package.json
 *  (works from test/helpers/ and from the compiled dist/test/helpers/);
 *  falls back to the cwd's ancestors when compiled outside the repo. */
export function repoRoot(): string {
  cachedRoot ??= findUp(__dirname) ?? findUp(process.cwd());
  if (cachedRoot === undefined) throw new Error(`no package.json above ${__dirname} or ${process.cwd()}`);
  return cachedRoot;
}
