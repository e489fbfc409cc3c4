// DiskQueue: the disk side of a session. It owns the io_uring and the disk
// fd's ops: submit (every op checked, its file range inside the disk, before
// any is queued), fixed-buffer registration and fixedIndex, the BLKDISCARD
// worker on libuv's thread pool, and what is outstanding or cancelled. On an
// RBD image the checked ops go to an RbdQueue instead of the ring.
#pragma once

#include <napi.h>
#include <sys/uio.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "buffer-table.h"
#include "rbd-queue.h"
#include "shared-arrays.h"
#include "uring.h"

namespace vublk {

class DiskQueue {
 public:
  // owner: the JS object kept alive (Ref) while a BLKDISCARD is on the
  // thread pool, so this queue outlives it.
  DiskQueue(const BufferTable& buffers, Napi::Reference<Napi::Object>& owner)
      : buffers_(buffers), owner_(owner) {}
  // Sets up the ring of `entries`; throws {code, errno} if io_uring refuses.
  // maxIovs: the iovecs arrays.sqIovs holds.
  // rbd: the image ops go to instead of diskFd (which is then unused).
  void init(Napi::Env env, uv_loop_t* loop, int diskFd, uint64_t diskBytes, bool blockDevice,
            unsigned entries, size_t maxIovs, std::shared_ptr<RbdHandle> rbd = nullptr);
  // Releases the ring; later discard results are dropped.
  void close();

  Uring& uring() { return uring_; }
  // The RBD queue's eventfd, or -1 on a file or block device.
  int rbdEventFd() const { return rbd_ ? rbd_->eventFd() : -1; }
  // Completions of the ring and of the RBD queue.
  unsigned reap(double* out, unsigned max);
  bool ready() { return uring_.ready() || (rbd_ && rbd_->ready()); }
  void ackEvents() {
    uring_.ackEvent();
    if (rbd_) rbd_->ackEvent();
  }

  // Checks then queues n ops [opcode, userData, fileOffset, iovStart, iovCount,
  // flags] with their iovecs; returns how many were queued.
  int64_t submit(Napi::Env env, const double* ops, const double* iovs, int64_t n);
  // The disk grew (online resize): later ops may reach the new end. Never
  // shrinks: ops of requests checked against the old size may still come.
  void growDisk(uint64_t bytes) {
    if (bytes > diskBytes_) diskBytes_ = bytes;
  }
  // Ops the kernel holds, ops librbd holds, BLKDISCARDs on the thread pool.
  unsigned inflight() const { return closed_ ? 0 : uring_.inflight(); }
  unsigned rbdInflight() const { return rbd_ ? rbd_->inflight() : 0; }
  unsigned pendingDiscards() const { return pendingDiscards_; }
  // Asks the kernel to cancel every op in flight; throws if it refuses.
  void cancelAll(Napi::Env env);
  // Registers every guest region and the first bounceBytes of the bounce
  // arena as fixed buffers; returns how many.
  size_t registerBuffers(Napi::Env env, uint64_t bounceBytes);
  void unregisterBuffers();

 private:
  bool insideDisk(double offset, double len) const;
  int fixedIndex(double bufId, double offset, double len) const;
  bool queueBlkDiscard(uint64_t off, uint64_t len, uint64_t userData);
  void startRbd(const double* op, const iovec* iov);

  const BufferTable& buffers_;
  Napi::Reference<Napi::Object>& owner_;
  Uring uring_;
  uv_loop_t* loop_ = nullptr;
  int diskFd_ = -1;
  uint64_t diskBytes_ = 0;
  bool blockDevice_ = false;
  bool closed_ = false;
  unsigned pendingDiscards_ = 0;
  std::vector<int> fixedBase_;  // first fixed buffer index per bufId, -1 if none
  int bounceFixed_ = -1;        // the arena's fixed buffer, -1 if none
  uint64_t bounceFixedLen_ = 0;  // its length: the arena's first bytes
  std::vector<iovec> iovScratch_;
  std::unique_ptr<RbdQueue> rbd_;
};

}  // namespace vublk
