#!/usr/bin/env node
'use strict';
// Runs the tap suite (config in package.json) and ends with one plain line,
// "N passed, N failed, N skipped", so any CI can read the result.
const { spawn } = require('node:child_process');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const tap = path.join(root, 'node_modules', '.bin', 'tap');
// tap skips git-ignored paths when it searches on its own, and dist/ is
// ignored: name the compiled tests explicitly unless files were given.
const args = process.argv.slice(2);
if (!args.some((a) => !a.startsWith('-'))) args.push('dist/test/**/*.test.js');
const child = spawn(tap, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
let tail = '';
child.stdout.on('data', (chunk) => {
  process.stdout.write(chunk);
  tail = (tail + chunk.toString()).slice(-4096);
});
child.on('close', (code, signal) => {
  const m = /# \{ total: \d+[^}]*\}/.exec(tail);
  const count = (key) => {
    const k = m && new RegExp(`${key}: (\\d+)`).exec(m[0]);
    return k ? Number(k[1]) : 0;
  };
  const failed = count('fail') + (m ? 0 : 1);
  process.stdout.write(`\n${count('pass')} passed, ${failed} failed, ${count('skip') + count('todo')} skipped\n`);
  process.exit(code ?? (signal ? 1 : 0));
});
