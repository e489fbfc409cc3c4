import t from 'tap';
import { deriveSegMax, deviceFeatures } from '../../src/blk/features';
import { featureNames } from '../../src/virtio/constants';

function bits(features: bigint): number[] {
  const out: number[] = [];
  for (let i = 0; i < 64; i++) if ((features >> BigInt(i)) & 1n) out.push(i);
  return out;
}

t.test('offered features', (t) => {
  // SIZE_MAX 1, SEG_MAX 2, BLK_SIZE 6, FLUSH 9, TOPOLOGY 10, CONFIG_WCE 11, MQ 12,
  // INDIRECT_DESC 28, EVENT_IDX 29, PROTOCOL_FEATURES 30, VERSION_1 32.
  const rw = [1, 2, 6, 9, 10, 11, 12, 28, 29, 30, 32];
  t.same(bits(deviceFeatures({ readOnly: false, queues: 1 })), rw);
  t.same(bits(deviceFeatures({ readOnly: false, queues: 8 })), rw, 'MQ is offered for any queue count');
  t.same(bits(deviceFeatures({ readOnly: true, queues: 1 })), [1, 2, 5, 6, 9, 10, 11, 12, 28, 29, 30, 32], 'RO');
  t.same(featureNames(deviceFeatures({ readOnly: true, queues: 1 })), [
    'SIZE_MAX',
    'SEG_MAX',
    'RO',
    'BLK_SIZE',
    'FLUSH',
    'TOPOLOGY',
    'CONFIG_WCE',
    'MQ',
    'INDIRECT_DESC',
    'EVENT_IDX',
    'PROTOCOL_FEATURES',
    'VERSION_1',
  ]);
  t.throws(() => deviceFeatures({ readOnly: false, queues: 0 }), RangeError);
  t.throws(() => deviceFeatures({ readOnly: false, queues: 65 }), RangeError);
  t.end();
});

t.test('deriveSegMax', (t) => {
  t.equal(deriveSegMax(256), 254);
  t.equal(deriveSegMax(128), 126);
  t.equal(deriveSegMax(1024), 1022);
  t.equal(deriveSegMax(2048), 1022, 'capped by IOV_MAX - 2');
  t.equal(deriveSegMax(4), 2);
  t.equal(deriveSegMax(2), 1, 'never 0');
  t.throws(() => deriveSegMax(0), RangeError);
  t.end();
});
