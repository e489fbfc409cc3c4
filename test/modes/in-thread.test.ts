// Runs the integration suite once more with the data plane on the main
// thread (--workers 0), the mode without worker threads: the plain run
// serves every queue on a worker of its own.

import t from 'tap';
import { integrationPass } from '../helpers/integration-pass';

t.test('integration suite passes with the data plane in-thread (--workers 0)', (t) => {
  integrationPass(t, 'with --workers 0', { VUBLK_TEST_WORKERS: '0' });
  t.end();
});
