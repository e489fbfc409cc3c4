// Thin io_uring wrapper: ops, submit with back-pressure, the completion
// stash and reaping into the cqes array (see uring.h).
#include "uring.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "shared-arrays.h"

namespace vublk {

namespace {
// userData of the ring's own SQEs (no-ops standing in for dropped ops, and
// cancel requests). JS userData is below 2^53, so it can never collide.
constexpr uint64_t kInternalUserData = ~0ull;
}  // namespace

int Uring::init(unsigned entries) {
  io_uring_params p{};
  // A completion queue four times the submission queue: in-flight requests
  // outlive their submission entries.
  p.flags = IORING_SETUP_CQSIZE;
  p.cq_entries = entries * 4;
  int rc = io_uring_queue_init_params(entries, &ring_, &p);
  if (rc < 0) return rc;
  ready_ = true;
  entries_ = entries;
  int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (efd < 0) return -errno;
  eventFd_.reset(efd);
  rc = io_uring_register_eventfd(&ring_, efd);
  if (rc < 0) return rc;
  return 0;
}

Uring::~Uring() { close(); }

void Uring::close() {
  if (ready_) io_uring_queue_exit(&ring_);
  ready_ = false;
  eventFd_.reset();
}

io_uring_sqe* Uring::sqe() {
  io_uring_sqe* s = io_uring_get_sqe(&ring_);
  if (!s) {
    // Full: hand the kernel what is queued. A failure leaves s null, the
    // caller stops queueing, and the caller's submit() reports it.
    submitOnce();
    s = io_uring_get_sqe(&ring_);
  }
  return s;
}

int Uring::submitOnce() {
  int rc = io_uring_submit(&ring_);
  if (rc > 0) inflight_ += static_cast<unsigned>(rc);
  return rc;
}

void Uring::dropUnconsumed() {
  // Without SQPOLL the kernel reads SQEs only inside io_uring_enter, so the
  // entries between its head and our tail can still be rewritten.
  io_uring_sq& sq = ring_.sq;
  unsigned head = *sq.khead;
  dropped_ = 0;
  for (unsigned i = head; i != sq.sqe_tail; i++) {
    io_uring_sqe* s = &sq.sqes[sq.array[i & sq.ring_mask]];
    // No-ops left by an earlier failure are not the caller's ops.
    if (s->user_data != kInternalUserData) dropped_++;
    io_uring_prep_nop(s);
    io_uring_sqe_set_data64(s, kInternalUserData);
  }
}

bool Uring::taken(uint64_t userData) {
  if (inflight_ > 0) inflight_--;
  return userData != kInternalUserData;
}

int Uring::cancelAll() {
  if (!ready_) return 0;
  io_uring_sqe* s = sqe();
  if (!s) return -EBUSY;
  io_uring_prep_cancel64(s, 0, IORING_ASYNC_CANCEL_ANY);
  io_uring_sqe_set_data64(s, kInternalUserData);
  return submit();
}

bool Uring::prepReadv(int fd, const iovec* iov, unsigned n, uint64_t off, uint64_t userData) {
  io_uring_sqe* s = sqe();
  if (!s) return false;
  io_uring_prep_readv(s, fd, iov, n, off);
  io_uring_sqe_set_data64(s, userData);
  return true;
}

bool Uring::prepWritev(int fd, const iovec* iov, unsigned n, uint64_t off, uint64_t userData,
                       bool dsync) {
  io_uring_sqe* s = sqe();
  if (!s) return false;
  io_uring_prep_writev(s, fd, iov, n, off);
  if (dsync) s->rw_flags = RWF_DSYNC;
  io_uring_sqe_set_data64(s, userData);
  return true;
}

bool Uring::prepFsync(int fd, uint64_t userData) {
  io_uring_sqe* s = sqe();
  if (!s) return false;
  io_uring_prep_fsync(s, fd, IORING_FSYNC_DATASYNC);
  io_uring_sqe_set_data64(s, userData);
  return true;
}

bool Uring::prepFallocate(int fd, int mode, uint64_t off, uint64_t len, uint64_t userData) {
  io_uring_sqe* s = sqe();
  if (!s) return false;
  io_uring_prep_fallocate(s, fd, mode, static_cast<off_t>(off), static_cast<off_t>(len));
  io_uring_sqe_set_data64(s, userData);
  return true;
}

bool Uring::prepFixed(bool write, int fd, void* buf, unsigned len, uint64_t off, unsigned index,
                      uint64_t userData, bool dsync) {
  io_uring_sqe* s = sqe();
  if (!s) return false;
  if (write) {
    io_uring_prep_write_fixed(s, fd, buf, len, off, static_cast<int>(index));
    if (dsync) s->rw_flags = RWF_DSYNC;
  } else {
    io_uring_prep_read_fixed(s, fd, buf, len, off, static_cast<int>(index));
  }
  io_uring_sqe_set_data64(s, userData);
  return true;
}

int Uring::registerBuffers(const iovec* iov, unsigned n) {
  unregisterBuffers();
  if (n == 0) return 0;
  int rc = io_uring_register_buffers(&ring_, iov, n);
  if (rc == 0) buffersRegistered_ = true;
  return rc;
}

void Uring::unregisterBuffers() {
  if (buffersRegistered_ && ready_) io_uring_unregister_buffers(&ring_);
  buffersRegistered_ = false;
}

int Uring::submit() {
  dropped_ = 0;
  int result = 0;
  for (unsigned idle = 0; io_uring_sq_ready(&ring_) > 0;) {
    int rc = submitOnce();
    if (rc > 0 || rc == -EINTR) {
      idle = 0;
      continue;
    }
    bool stuck = ++idle > 1000;  // no progress: give up rather than spin
    if (stuck || (rc != 0 && rc != -EBUSY && rc != -EAGAIN)) {
      dropUnconsumed();
      result = stuck ? -EAGAIN : rc;
      break;
    }
    if (rc == 0) continue;
    // The completion side is full: move completions aside, then retry.
    io_uring_cqe* cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      uint64_t ud = io_uring_cqe_get_data64(cqe);
      if (taken(ud)) stash_.emplace_back(ud, cqe->res);
      n++;
    }
    io_uring_cq_advance(&ring_, n);
    if (n == 0) io_uring_get_events(&ring_);  // flush the kernel's overflow list
  }
  if (stashHead_ < stash_.size()) {
    // Wake our own completion poll so stashed completions get delivered.
    uint64_t one = 1;
    ssize_t w = write(eventFd_.get(), &one, sizeof one);
    (void)w;
  }
  return result;
}

void Uring::ackEvent() {
  uint64_t v;
  while (read(eventFd_.get(), &v, sizeof v) < 0 && errno == EINTR) {
  }
}

void Uring::postCompletion(uint64_t userData, int32_t res) {
  if (!ready_) return;
  stash_.emplace_back(userData, res);
  uint64_t one = 1;
  ssize_t w = write(eventFd_.get(), &one, sizeof one);
  (void)w;
}

unsigned Uring::reap(double* out, unsigned max) {
  io_uring_cqe* cqes[64];
  unsigned total = 0;
  while (total < max && stashHead_ < stash_.size()) {
    out[kCqeStride * total] = static_cast<double>(stash_[stashHead_].first);
    out[kCqeStride * total + 1] = stash_[stashHead_].second;
    stashHead_++;
    total++;
  }
  if (stashHead_ == stash_.size()) {
    stash_.clear();
    stashHead_ = 0;
  }
  while (total < max) {
    unsigned want = max - total < 64 ? max - total : 64;
    unsigned got = io_uring_peek_batch_cqe(&ring_, cqes, want);
    if (got == 0) break;
    for (unsigned i = 0; i < got; i++) {
      uint64_t ud = io_uring_cqe_get_data64(cqes[i]);
      if (!taken(ud)) continue;
      out[kCqeStride * total] = static_cast<double>(ud);
      out[kCqeStride * total + 1] = cqes[i]->res;
      total++;
    }
    io_uring_cq_advance(&ring_, got);
  }
  return total;
}

}  // namespace vublk
