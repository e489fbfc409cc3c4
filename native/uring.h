// Thin io_uring wrapper: one ring with an eventfd that signals completions.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "unique-fd.h"

namespace vublk {

class Uring {
 public:
  // Returns 0 or -errno.
  int init(unsigned entries);
  ~Uring();
  int eventFd() const { return eventFd_.get(); }

  // Each prep returns false when the submission queue is full even after
  // submitting what it holds.
  bool prepReadv(int fd, const iovec* iov, unsigned n, uint64_t off, uint64_t userData);
  // dsync: RWF_DSYNC, for a guest that turned the write cache off.
  bool prepWritev(int fd, const iovec* iov, unsigned n, uint64_t off, uint64_t userData,
                  bool dsync);
  bool prepFsync(int fd, uint64_t userData);
  bool prepFallocate(int fd, int mode, uint64_t off, uint64_t len, uint64_t userData);
  // READ_FIXED / WRITE_FIXED on registered buffer `index` (buf must lie in it).
  bool prepFixed(bool write, int fd, void* buf, unsigned len, uint64_t off, unsigned index,
                 uint64_t userData, bool dsync);
  // Registers buffers as fixed buffers; 0 or -errno. Replaces any earlier set.
  int registerBuffers(const iovec* iov, unsigned n);
  void unregisterBuffers();
  // Submits everything queued. When the kernel pushes back (-EBUSY/-EAGAIN:
  // its completion queue is full), completions are moved to a stash to make
  // room, so every prepared SQE is consumed before this returns: their
  // iovecs live only until then. Returns 0 or -errno. On -errno the SQEs the
  // kernel did not consume are turned into no-ops (their iovecs are about to
  // be reused for other requests, so the kernel must never see them as
  // prepared) and dropped() says how many: they were the last ones prepared.
  int submit();
  // SQEs the last failed submit() turned into no-ops (0 after a success).
  unsigned dropped() const { return dropped_; }
  // Asks the kernel to cancel every op in flight (IORING_ASYNC_CANCEL_ANY).
  // Ops already running (e.g. blocked in an io-wq worker) are not cancelled:
  // they complete in their own time. Returns 0 or -errno.
  int cancelAll();
  // Ops the kernel has consumed whose completion has not been taken from the
  // completion queue yet: the ring's outstanding work.
  unsigned inflight() const { return inflight_; }
  // The ring's fd (tests swap it to make io_uring_enter fail).
  int ringFd() const { return ring_.ring_fd; }
  // Reaps up to max completions (stashed ones first) into (userData, res) pairs.
  unsigned reap(double* out, unsigned max);
  // Releases the ring and its eventfd now (also done by the destructor).
  void close();
  // Delivers a completion for work done outside the ring (a BLKDISCARD on a
  // worker thread) through the same path as the ring's own: stash + eventfd.
  void postCompletion(uint64_t userData, int32_t res);
  // Completions waiting to be reaped (stashed or in the completion queue).
  bool ready() const { return stashHead_ < stash_.size() || io_uring_cq_ready(&ring_) > 0; }
  // Drains the eventfd counter (call before reaping).
  void ackEvent();
  unsigned entries() const { return entries_; }

 private:
  io_uring_sqe* sqe();
  // Submits once; counts what the kernel consumed. Returns io_uring_submit's rc.
  int submitOnce();
  void dropUnconsumed();
  // Completion taken off the kernel's queue: one op fewer in flight. Returns
  // false for the ring's own no-ops and cancel requests (never reported).
  bool taken(uint64_t userData);
  io_uring ring_{};
  bool ready_ = false;
  UniqueFd eventFd_;
  unsigned entries_ = 0;
  bool buffersRegistered_ = false;
  unsigned inflight_ = 0;
  unsigned dropped_ = 0;
  std::vector<std::pair<uint64_t, int32_t>> stash_;
  size_t stashHead_ = 0;
};

}  // namespace vublk
