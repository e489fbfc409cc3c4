import t from 'tap';
import fc from 'fast-check';
import { checkRequest, encodeSerial } from '../../src/blk/request';
import { statusForErrno } from '../../src/blk/status';

const OK = 0;
const IOERR = 1;
const UNSUPP = 2;
const PROCEED = -1;

const disk = { capacitySectors: 2048, readOnly: false };
const roDisk = { capacitySectors: 2048, readOnly: true };

function req(type: number, sector: number, dataLen: number): { type: number; sector: number; dataLen: number } {
  return { type, sector, dataLen };
}

t.test('IN and OUT', (t) => {
  t.equal(checkRequest(req(0, 0, 512), disk), PROCEED, 'read of the first sector');
  t.equal(checkRequest(req(1, 0, 4096), disk), PROCEED, 'write of 8 sectors');
  t.equal(checkRequest(req(0, 2047, 512), disk), PROCEED, 'read of the last sector');
  t.equal(checkRequest(req(0, 2048, 0), disk), PROCEED, 'empty read at the end');
  t.equal(checkRequest(req(0, 0, 511), disk), IOERR, 'length not a multiple of 512');
  t.equal(checkRequest(req(1, 0, 513), disk), IOERR, 'write length not a multiple of 512');
  t.equal(checkRequest(req(0, 2047, 1024), disk), IOERR, 'range crosses the end');
  t.equal(checkRequest(req(0, 2048, 512), disk), IOERR, 'range starts at the end');
  t.equal(checkRequest(req(0, 2049, 0), disk), IOERR, 'sector past the end');
  t.equal(checkRequest(req(1, 0, 512), roDisk), IOERR, 'write on a read-only disk');
  t.equal(checkRequest(req(0, 0, 512), roDisk), PROCEED, 'read on a read-only disk');
  t.equal(checkRequest(req(0, Infinity, 0), disk), IOERR, 'u64 sector >= 2^53');
  t.equal(checkRequest(req(1, Infinity, 512), disk), IOERR, 'u64 sector >= 2^53, write');
  const huge = { capacitySectors: 2 ** 53 - 1, readOnly: false };
  t.equal(checkRequest(req(0, 2 ** 53 - 2, 512), huge), PROCEED, 'last sector of a 2^53-sector disk');
  t.equal(checkRequest(req(0, 2 ** 53 - 2, 1024), huge), IOERR, 'overflow-safe at 2^53');
  t.end();
});

t.test('IN and OUT on a 4K logical block disk', (t) => {
  const d4k = { capacitySectors: 2048, readOnly: false, logicalBlockSize: 4096 };
  t.equal(checkRequest(req(0, 8, 4096), d4k), PROCEED);
  t.equal(checkRequest(req(0, 8, 512), d4k), IOERR, 'length not a multiple of 4096');
  t.equal(checkRequest(req(1, 4, 4096), d4k), IOERR, 'sector not on a 4K boundary');
  t.equal(checkRequest(req(0, Infinity, 4096), d4k), IOERR);
  t.end();
});

t.test('the range check matches exact integer arithmetic', (t) => {
  fc.assert(
    fc.property(fc.nat(1 << 20), fc.nat(1 << 21), fc.nat(1 << 12), fc.boolean(), (cap, sector, nsectors, write) => {
      const inRange = BigInt(sector) + BigInt(nsectors) <= BigInt(cap);
      const got = checkRequest(req(write ? 1 : 0, sector, nsectors * 512), {
        capacitySectors: cap,
        readOnly: false,
      });
      return got === (inRange ? PROCEED : IOERR);
    }),
    { numRuns: 2000 },
  );
  t.pass('property holds');
  t.end();
});

t.test('FLUSH proceeds regardless of sector and disk mode', (t) => {
  t.equal(checkRequest(req(4, 0, 0), disk), PROCEED);
  t.equal(checkRequest(req(4, 999999, 0), disk), PROCEED);
  t.equal(checkRequest(req(4, Infinity, 0), roDisk), PROCEED);
  t.end();
});

t.test('GET_ID needs room for data', (t) => {
  t.equal(checkRequest(req(8, 0, 20), disk), PROCEED);
  t.equal(checkRequest(req(8, 0, 1), roDisk), PROCEED);
  t.equal(checkRequest(req(8, 0, 0), disk), IOERR);
  t.end();
});

t.test('types not offered and unknown types are UNSUPP', (t) => {
  for (const type of [10, 11, 13, 14, 2, 3, 5, 7, 9, 12, 15, 0x7fffffff, 0xffffffff]) {
    t.equal(checkRequest(req(type, 0, 512), disk), UNSUPP, `type ${type}`);
  }
  t.end();
});

t.test('statusForErrno maps results to one status each', (t) => {
  t.equal(statusForErrno(0), OK);
  t.equal(statusForErrno(4096), OK, 'bytes transferred');
  t.equal(statusForErrno(-95), UNSUPP, 'EOPNOTSUPP');
  t.equal(statusForErrno(-5), IOERR, 'EIO');
  t.equal(statusForErrno(-28), IOERR, 'ENOSPC');
  t.equal(statusForErrno(-22), IOERR, 'EINVAL');
  t.equal(statusForErrno(Number.NaN), IOERR, 'not a number');
  t.end();
});

t.test('encodeSerial', (t) => {
  t.same(Array.from(encodeSerial('vublk')), [0x76, 0x75, 0x62, 0x6c, 0x6b, ...new Array<number>(15).fill(0)]);
  const full = encodeSerial('ABCDEFGHIJKLMNOPQRST');
  t.equal(full.length, 20);
  t.equal(Buffer.from(full).toString('latin1'), 'ABCDEFGHIJKLMNOPQRST', 'no NUL at 20 bytes');
  t.equal(Buffer.from(encodeSerial('ABCDEFGHIJKLMNOPQRSTUVW')).toString('latin1'), 'ABCDEFGHIJKLMNOPQRST');
  t.same(Array.from(encodeSerial('a\u00e9\n')).slice(0, 4), [0x61, 0x3f, 0x3f, 0]);
  t.same(Array.from(encodeSerial('')), new Array<number>(20).fill(0));
  t.end();
});
