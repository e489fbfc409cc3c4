// RbdQueue: a session's ops on an RBD image through librbd's asynchronous
// API. librbd completes them on its own threads; their (userData, res) wait
// in a locked list, an eventfd wakes the session's loop thread, which reaps
// them in batches like io_uring completions.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "rbd-image.h"
#include "unique-fd.h"

namespace vublk {

class RbdQueue {
 public:
  enum class Kind { kReadv, kWritev, kFlush, kDiscard, kWriteZeroes };

  // 0 or -errno (the eventfd).
  int init(std::shared_ptr<RbdHandle> image);
  ~RbdQueue() { close(); }
  int eventFd() const { return eventFd_.get(); }

  // Starts one op; its completion always comes through reap(), also when
  // librbd refuses it at once. dsync: a write completes only after a flush
  // that follows it. iov is copied into the op: the caller may reuse it at once.
  void start(Kind kind, uint64_t userData, uint64_t off, uint64_t len, const iovec* iov, unsigned iovcnt,
             bool dsync);
  // Moves up to max completions into (userData, res) pairs.
  unsigned reap(double* out, unsigned max);
  bool ready();
  void ackEvent();
  // Ops librbd holds (started, completion not yet reaped is not counted).
  unsigned inflight() const { return inflight_; }
  // Waits for every op librbd holds: their callbacks touch this queue, and
  // reads write into guest memory the caller is about to unmap.
  void close();

 private:
  struct Op;
  static void onComplete(void* completion, void* arg);
  void finish(Op* op, int64_t res);

  std::shared_ptr<RbdHandle> image_;
  UniqueFd eventFd_;
  std::mutex lock_;
  std::condition_variable idle_;
  std::vector<std::pair<uint64_t, int32_t>> done_;  // under lock_
  std::atomic<unsigned> inflight_{0};                // changed under lock_
};

}  // namespace vublk
