// Layering rules for src/ (issue 10, item 2), run by test/layering.test.ts:
// no import cycles, the request path (blk/, align/) never reaches the native binding, and
// only bench/ and cli/ use the in-repo frontend.
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'An import cycle (type-only imports count) means two modules are one; merge them or move the shared part down.',
      from: {},
      to: { circular: true },
    },
    {
      name: 'request-path-not-native',
      severity: 'error',
      comment: 'src/blk/ and src/align/ take a disk and segment lists; only the device layer may load the native binding.',
      from: { path: '(^|/)src/(blk|align)/' },
      to: { path: '(^|/)src/native/' },
    },
    {
      name: 'frontend-only-for-bench',
      severity: 'error',
      comment: 'src/frontend/ plays QEMU and the guest: only the load generator (bench/) and the CLI drive it.',
      from: { path: '(^|/)src/', pathNot: '(^|/)src/(frontend|bench|cli)/' },
      to: { path: '(^|/)src/frontend/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    // Count `import type` too: a type-only cycle is still a cycle for the reader.
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
};
