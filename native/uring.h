// Thin io_uring wrapper: one ring with an eventfd that signals completions.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vublk {

class Uring {
 public:
  // Returns 0 or -errno.
  int init(unsigned entries);
  ~Uring();
  int eventFd() const { return eventFd_; }

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
  // iovecs live only until then. Returns 0 or -errno.
  int submit();
  // Reaps up to max completions (stashed ones first) into (userData, res) pairs.
  unsigned reap(double* out, unsigned max);
  // Releases the ring and its eventfd now (also done by the destructor).
  void close();
  // Delivers a completion for work done outside the ring (a BLKDISCARD on a
  // worker thread) through the same path as the ring's own: stash + eventfd.
  void postCompletion(uint64_t userData, int32_t res);
  // Drains the eventfd counter (call before reaping).
  void ackEvent();
  unsigned entries() const { return entries_; }

 private:
  io_uring_sqe* sqe();
  io_uring ring_{};
  bool ready_ = false;
  int eventFd_ = -1;
  unsigned entries_ = 0;
  bool buffersRegistered_ = false;
  std::vector<std::pair<uint64_t, int32_t>> stash_;
  size_t stashHead_ = 0;
};

}  // namespace vublk
