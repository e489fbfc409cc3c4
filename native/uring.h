// Thin io_uring wrapper: one ring with an eventfd that signals completions.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <cstdint>
#include <string>

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
  // Submits what is queued; returns submitted count or -errno.
  int submit();
  // Reaps up to max completions into (userData, res) pairs.
  unsigned reap(double* out, unsigned max);
  // Drains the eventfd counter (call before reaping).
  void ackEvent();
  unsigned entries() const { return entries_; }

 private:
  io_uring_sqe* sqe();
  io_uring ring_{};
  bool ready_ = false;
  int eventFd_ = -1;
  unsigned entries_ = 0;
};

}  // namespace vublk
