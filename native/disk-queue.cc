// DiskQueue: submit validation, fixed buffers, the BLKDISCARD worker (see
// disk-queue.h).
#include "disk-queue.h"

#include <algorithm>

#include <linux/fs.h>
#include <sys/ioctl.h>

#include "errno-error.h"

namespace vublk {

void DiskQueue::init(Napi::Env env, uv_loop_t* loop, int diskFd, uint64_t diskBytes,
                     bool blockDevice, unsigned entries, size_t maxIovs, std::shared_ptr<RbdHandle> rbd) {
  loop_ = loop;
  diskFd_ = diskFd;
  diskBytes_ = diskBytes;
  blockDevice_ = blockDevice;
  iovScratch_.resize(maxIovs);
  int rc = uring_.init(entries);
  if (rc < 0) throwErrno(env, -rc, "io_uring_queue_init");
  if (rbd) {
    rbd_ = std::make_unique<RbdQueue>();
    rc = rbd_->init(std::move(rbd));
    if (rc < 0) throwErrno(env, -rc, "eventfd");
  }
}

void DiskQueue::close() {
  closed_ = true;
  uring_.close();
  if (rbd_) rbd_->close();
}

unsigned DiskQueue::reap(double* out, unsigned max) {
  unsigned n = uring_.reap(out, max);
  if (rbd_ && n < max) n += rbd_->reap(out + static_cast<size_t>(n) * kCqeStride, max - n);
  return n;
}

// One checked op to librbd (iov: its iovecs, null for the ops without).
void DiskQueue::startRbd(const double* op, const iovec* iov) {
  unsigned opcode = static_cast<unsigned>(op[0]);
  uint64_t userData = static_cast<uint64_t>(op[1]), off = static_cast<uint64_t>(op[2]);
  if (opcode == kOpFsync) {
    rbd_->start(RbdQueue::Kind::kFlush, userData, 0, 0, nullptr, 0, false);
  } else if (opcode == kOpFallocate) {
    auto kind = static_cast<int>(op[4]) == kFallocZero ? RbdQueue::Kind::kWriteZeroes : RbdQueue::Kind::kDiscard;
    rbd_->start(kind, userData, off, static_cast<uint64_t>(op[3]), nullptr, 0, false);
  } else {
    unsigned cnt = static_cast<unsigned>(op[4]);
    uint64_t len = 0;
    for (unsigned i = 0; i < cnt; i++) len += iov[i].iov_len;
    rbd_->start(opcode == kOpReadv ? RbdQueue::Kind::kReadv : RbdQueue::Kind::kWritev, userData, off, len, iov, cnt,
                static_cast<unsigned>(op[5]) & kOpFlagDsync);
  }
}

int64_t DiskQueue::submit(Napi::Env env, const double* ops, const double* iovs, int64_t n) {
  // No more disk I/O for a frontend whose memory faulted: none is taken,
  // so JS fails every op (EIO) and the connection drains at once.
  if (buffers_.faulted()) return 0;
  size_t maxIovs = iovScratch_.size();
  // Check every op before queuing any, so a bad one leaves nothing half-done.
  for (int64_t k = 0; k < n; k++) {
    const double* op = ops + k * kOpStride;
    if (!(op[0] == kOpReadv || op[0] == kOpWritev || op[0] == kOpFsync || op[0] == kOpFallocate ||
          op[0] == kOpBlkDiscard))
      throw Napi::RangeError::New(env, "submit: unknown opcode");
    if (!(op[1] >= 0 && op[1] <= 9007199254740992.0 && op[5] >= 0 && op[5] <= 255))
      throw Napi::RangeError::New(env, "submit: bad userData or flags");
    if (op[0] == kOpFsync) continue;
    if (op[0] == kOpFallocate || op[0] == kOpBlkDiscard) {
      if (!(op[2] >= 0 && op[2] <= 9007199254740992.0 && op[3] > 0 && op[3] <= 9007199254740992.0 &&
            (op[0] == kOpBlkDiscard || op[4] == kFallocPunch || op[4] == kFallocZero)))
        throw Napi::RangeError::New(env, "submit: bad fallocate/discard range or mode");
      if (op[0] == kOpBlkDiscard && (!blockDevice_ || rbd_))
        throw Napi::RangeError::New(env, "submit: BLKDISCARD on a disk that is not a block device");
      if (!insideDisk(op[2], op[3]))
        throw Napi::RangeError::New(env, "submit: fallocate/discard range outside the disk");
      continue;
    }
    double start = op[3], count = op[4];
    if (!(start >= 0 && count >= 1 && count <= kIovMax && start + count <= maxIovs))
      throw Napi::RangeError::New(env, "submit: iovec range out of bounds");
    if (!(op[2] >= 0 && op[2] <= 9007199254740992.0))
      throw Napi::RangeError::New(env, "submit: file offset out of range");
    if ((static_cast<unsigned>(op[5]) & kOpFlagFixed) &&
        (count != 1 || fixedIndex(iovs[static_cast<size_t>(start) * kIovStride],
                                  iovs[static_cast<size_t>(start) * kIovStride + 1],
                                  iovs[static_cast<size_t>(start) * kIovStride + 2]) < 0))
      throw Napi::RangeError::New(env, "submit: FIXED op is not one iovec in one registered buffer");
    double bytes = 0;  // <= 1024 iovecs of < 2^53 each: exact enough to compare below
    for (size_t m = static_cast<size_t>(start); m < static_cast<size_t>(start + count); m++) {
      const double* iv = iovs + m * kIovStride;
      uint8_t* p = buffers_.ptr(iv[0], iv[1], iv[2]);
      if (!p) throw Napi::RangeError::New(env, "submit: iovec outside guest memory and bounce arena");
      if (op[0] == kOpReadv && iv[0] == kZeroBufId)
        throw Napi::RangeError::New(env, "submit: cannot read into the zero buffer");
      iovScratch_[m] = iovec{p, static_cast<size_t>(iv[2])};
      bytes += iv[2];
    }
    if (!insideDisk(op[2], bytes))
      throw Napi::RangeError::New(env, "submit: read/write range outside the disk");
  }
  if (rbd_) {
    for (int64_t k = 0; k < n; k++) {
      const double* op = ops + k * kOpStride;
      bool hasIov = op[0] == kOpReadv || op[0] == kOpWritev;
      startRbd(op, hasIov ? iovScratch_.data() + static_cast<size_t>(op[3]) : nullptr);
    }
    return n;
  }
  int64_t queued = 0;
  int rc = 0;
  for (; queued < n; queued++) {
    const double* op = ops + queued * kOpStride;
    unsigned opcode = static_cast<unsigned>(op[0]);
    uint64_t userData = static_cast<uint64_t>(op[1]);
    uint64_t off = static_cast<uint64_t>(op[2]);
    const iovec* iov =
        opcode == kOpFallocate || opcode == kOpBlkDiscard ? nullptr : iovScratch_.data() + static_cast<size_t>(op[3]);
    unsigned cnt = static_cast<unsigned>(op[4]);
    unsigned flags = static_cast<unsigned>(op[5]);
    bool dsync = flags & kOpFlagDsync;
    bool ok;
    if (opcode == kOpFsync) {
      ok = uring_.prepFsync(diskFd_, userData);
    } else if (opcode == kOpBlkDiscard) {
      // Hand the SQ to the kernel first, so that the ops taken are always
      // the first `queued - dropped` of the batch.
      rc = uring_.submit();
      if (rc < 0) break;
      ok = queueBlkDiscard(off, static_cast<uint64_t>(op[3]), userData);
    } else if (opcode == kOpFallocate) {
      ok = uring_.prepFallocate(diskFd_, static_cast<int>(op[4]), off, static_cast<uint64_t>(op[3]),
                                userData);
    } else if (flags & kOpFlagFixed) {
      const double* iv = iovs + static_cast<size_t>(op[3]) * kIovStride;
      ok = uring_.prepFixed(opcode == kOpWritev, diskFd_, iov->iov_base,
                            static_cast<unsigned>(iov->iov_len), off,
                            static_cast<unsigned>(fixedIndex(iv[0], iv[1], iv[2])), userData, dsync);
    } else if (opcode == kOpReadv) {
      ok = uring_.prepReadv(diskFd_, iov, cnt, off, userData);
    } else {
      ok = uring_.prepWritev(diskFd_, iov, cnt, off, userData, dsync);
    }
    if (!ok) break;
  }
  if (rc == 0) rc = uring_.submit();
  int64_t taken = queued - static_cast<int64_t>(uring_.dropped());
  if (rc < 0) {
    // The ops after the first `taken` never reach the kernel (Uring made
    // their SQEs no-ops); JS fails exactly those.
    Napi::Error e = errnoError(env, -rc, "io_uring_submit");
    e.Set("taken", Napi::Number::New(env, static_cast<double>(taken)));
    throw e;
  }
  return queued;
}

// Is [offset, offset + len) inside the disk? (doubles < 2^53, checked by the caller)
bool DiskQueue::insideDisk(double offset, double len) const {
  return offset <= static_cast<double>(diskBytes_) && len <= static_cast<double>(diskBytes_) - offset;
}

// librbd cannot cancel: its ops complete in their own time.
void DiskQueue::cancelAll(Napi::Env env) {
  int rc = uring_.cancelAll();
  if (rc < 0) throwErrno(env, -rc, "io_uring_submit");
}

// Registers every guest region with io_uring as fixed buffers, in chunks of
// at most kFixedChunk (the kernel's limit per buffer is 1 GiB), and the
// first bounceBytes of the bounce arena as one more (bounced requests then
// use READ_FIXED / WRITE_FIXED too; pinning faults those pages in, so only
// the part a first-fit allocator hands out most is registered). Returns
// the number of fixed buffers; throws {code, errno} if the kernel refuses
// (e.g. RLIMIT_MEMLOCK), leaving none registered. The caller has drained
// I/O on the previous table.
size_t DiskQueue::registerBuffers(Napi::Env env, uint64_t bounceBytes) {
  if (rbd_) return 0;  // librbd takes plain iovecs: nothing to pin
  std::vector<iovec> iov;
  fixedBase_.assign(GuestMemory::kMaxRegions, -1);
  bounceFixed_ = -1;
  bounceFixedLen_ = 0;
  for (uint32_t id = 0; id < GuestMemory::kMaxRegions; id++) {
    const Region* r = buffers_.mem().region(id);
    if (!r) continue;
    fixedBase_[id] = static_cast<int>(iov.size());
    for (uint64_t off = 0; off < r->size; off += kFixedChunk) {
      uint64_t len = r->size - off < kFixedChunk ? r->size - off : kFixedChunk;
      iov.push_back(iovec{r->host + off, static_cast<size_t>(len)});
    }
  }
  uint64_t arena = std::min({bounceBytes, buffers_.bounceLen(), static_cast<uint64_t>(kFixedChunk)});
  if (arena > 0 && buffers_.bounce()) {
    bounceFixed_ = static_cast<int>(iov.size());
    bounceFixedLen_ = arena;
    iov.push_back(iovec{buffers_.bounce(), static_cast<size_t>(arena)});
  }
  int rc = iov.empty() ? 0 : uring_.registerBuffers(iov.data(), static_cast<unsigned>(iov.size()));
  if (rc < 0) {
    fixedBase_.clear();
    bounceFixed_ = -1;
    bounceFixedLen_ = 0;
    throwErrno(env, -rc, "io_uring_register_buffers");
  }
  return iov.size();
}

void DiskQueue::unregisterBuffers() {
  uring_.unregisterBuffers();
  fixedBase_.clear();
  bounceFixed_ = -1;
  bounceFixedLen_ = 0;
}

// Fixed buffer index for (bufId, offset, len), or -1 if it is not inside
// one registered chunk.
int DiskQueue::fixedIndex(double bufId, double offset, double len) const {
  if (bufId == kBounceBufId) {
    bool inside = bounceFixed_ >= 0 && offset >= 0 && len > 0 && len <= static_cast<double>(bounceFixedLen_) &&
                  offset <= static_cast<double>(bounceFixedLen_) - len;
    return inside ? bounceFixed_ : -1;
  }
  if (fixedBase_.empty() || !(bufId >= 0 && bufId < GuestMemory::kMaxRegions)) return -1;
  int base = fixedBase_[static_cast<size_t>(bufId)];
  if (base < 0 || !(offset >= 0 && len > 0)) return -1;
  uint64_t off = static_cast<uint64_t>(offset), n = static_cast<uint64_t>(len);
  if (fixedChunkOf(off) != fixedChunkOf(off + n - 1)) return -1;
  return base + static_cast<int>(fixedChunkOf(off));
}

namespace {

struct DiscardWork {
  uv_work_t work;
  DiskQueue* queue;
  int fd;
  uint64_t range[2];
  uint64_t userData;
  int res;
};

}  // namespace

// Runs BLKDISCARD on the thread pool. The JS object is kept alive (Ref)
// until the result is back on the loop thread.
bool DiskQueue::queueBlkDiscard(uint64_t off, uint64_t len, uint64_t userData) {
  auto* w = new DiscardWork{};
  w->work.data = w;
  w->queue = this;
  w->fd = diskFd_;
  w->range[0] = off;
  w->range[1] = len;
  w->userData = userData;
  int rc = uv_queue_work(
      loop_, &w->work,
      [](uv_work_t* req) {
        auto* d = static_cast<DiscardWork*>(req->data);
        d->res = ioctl(d->fd, BLKDISCARD, d->range) == 0 ? 0 : -errno;
      },
      [](uv_work_t* req, int status) {
        auto* d = static_cast<DiscardWork*>(req->data);
        DiskQueue* q = d->queue;
        q->pendingDiscards_--;
        if (!q->closed_) q->uring_.postCompletion(d->userData, status == 0 ? d->res : -ECANCELED);
        q->owner_.Unref();
        delete d;
      });
  if (rc != 0) {
    delete w;
    return false;
  }
  pendingDiscards_++;
  owner_.Ref();
  return true;
}

}  // namespace vublk
