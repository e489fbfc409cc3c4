#!/usr/bin/env node
'use strict';
// The vublk daemon. Runs the compiled TypeScript in dist/ (npm run build).
const path = require('node:path');
const fs = require('node:fs');

const entry = path.join(__dirname, '..', 'dist', 'src', 'cli', 'main.js');
if (!fs.existsSync(entry)) {
  process.stderr.write('vublk: error: not built: run "npm run build" (or "npm start", which builds)\n');
  process.exit(1);
}
require(entry).main(process.argv.slice(2));
