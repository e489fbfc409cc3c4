import t from 'tap';
import * as c from '../../src/virtio/constants';
import { featureMask, featureNames, hasFeature } from '../../src/virtio/constants';

t.test('numbers from the spec', (t) => {
  const expected: Record<string, number> = {
    VIRTIO_F_VERSION_1: 32,
    VIRTIO_RING_F_INDIRECT_DESC: 28,
    VIRTIO_RING_F_EVENT_IDX: 29,
    VHOST_USER_F_PROTOCOL_FEATURES: 30,
    VIRTIO_BLK_F_SIZE_MAX: 1,
    VIRTIO_BLK_F_SEG_MAX: 2,
    VIRTIO_BLK_F_GEOMETRY: 4,
    VIRTIO_BLK_F_RO: 5,
    VIRTIO_BLK_F_BLK_SIZE: 6,
    VIRTIO_BLK_F_FLUSH: 9,
    VIRTIO_BLK_F_TOPOLOGY: 10,
    VIRTIO_BLK_F_CONFIG_WCE: 11,
    VIRTIO_BLK_F_MQ: 12,
    VIRTIO_BLK_F_DISCARD: 13,
    VIRTIO_BLK_F_WRITE_ZEROES: 14,
    VIRTIO_BLK_T_IN: 0,
    VIRTIO_BLK_T_OUT: 1,
    VIRTIO_BLK_T_FLUSH: 4,
    VIRTIO_BLK_T_GET_ID: 8,
    VIRTIO_BLK_T_GET_LIFETIME: 10,
    VIRTIO_BLK_T_DISCARD: 11,
    VIRTIO_BLK_T_WRITE_ZEROES: 13,
    VIRTIO_BLK_T_SECURE_ERASE: 14,
    VIRTIO_BLK_S_OK: 0,
    VIRTIO_BLK_S_IOERR: 1,
    VIRTIO_BLK_S_UNSUPP: 2,
    VIRTIO_BLK_ID_BYTES: 20,
    SECTOR_SIZE: 512,
    IOV_MAX: 1024,
  };
  for (const [name, value] of Object.entries(expected)) {
    t.equal((c as unknown as Record<string, number>)[name], value, name);
  }
  t.end();
});

t.test('feature helpers', (t) => {
  t.equal(featureMask([]), 0n);
  t.equal(featureMask([0, 32, 63]), (1n << 0n) | (1n << 32n) | (1n << 63n));
  t.equal(featureMask([5, 5]), 32n);
  t.throws(() => featureMask([64]), RangeError);
  t.throws(() => featureMask([-1]), RangeError);
  t.throws(() => featureMask([1.5]), RangeError);
  t.equal(hasFeature(1n << 32n, 32), true);
  t.equal(hasFeature(1n << 32n, 31), false);
  t.equal(hasFeature(1n << 63n, 63), true);
  t.throws(() => hasFeature(1n, 64), RangeError);
  t.same(featureNames(0n), []);
  t.same(featureNames(featureMask([32, 1, 29, 50])), ['SIZE_MAX', 'EVENT_IDX', 'VERSION_1', 'bit50']);
  t.end();
});
