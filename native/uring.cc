#include "uring.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

namespace vublk {

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
  eventFd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (eventFd_ < 0) return -errno;
  rc = io_uring_register_eventfd(&ring_, eventFd_);
  if (rc < 0) return rc;
  return 0;
}

Uring::~Uring() { close(); }

void Uring::close() {
  if (ready_) io_uring_queue_exit(&ring_);
  ready_ = false;
  if (eventFd_ >= 0) ::close(eventFd_);
  eventFd_ = -1;
}

io_uring_sqe* Uring::sqe() {
  io_uring_sqe* s = io_uring_get_sqe(&ring_);
  if (!s) {
    io_uring_submit(&ring_);
    s = io_uring_get_sqe(&ring_);
  }
  return s;
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
  for (unsigned idle = 0; io_uring_sq_ready(&ring_) > 0;) {
    int rc = io_uring_submit(&ring_);
    if (rc > 0 || rc == -EINTR) {
      idle = 0;
      continue;
    }
    if (++idle > 1000) return -EAGAIN;  // no progress: give up rather than spin
    if (rc == 0) continue;
    if (rc != -EBUSY && rc != -EAGAIN) return rc;
    // The completion side is full: move completions aside, then retry.
    io_uring_cqe* cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      stash_.emplace_back(io_uring_cqe_get_data64(cqe), cqe->res);
      n++;
    }
    io_uring_cq_advance(&ring_, n);
    if (n == 0) io_uring_get_events(&ring_);  // flush the kernel's overflow list
  }
  if (stashHead_ < stash_.size()) {
    // Wake our own completion poll so stashed completions get delivered.
    uint64_t one = 1;
    ssize_t w = write(eventFd_, &one, sizeof one);
    (void)w;
  }
  return 0;
}

void Uring::ackEvent() {
  uint64_t v;
  while (read(eventFd_, &v, sizeof v) < 0 && errno == EINTR) {
  }
}

void Uring::postCompletion(uint64_t userData, int32_t res) {
  if (!ready_) return;
  stash_.emplace_back(userData, res);
  uint64_t one = 1;
  ssize_t w = write(eventFd_, &one, sizeof one);
  (void)w;
}

unsigned Uring::reap(double* out, unsigned max) {
  io_uring_cqe* cqes[64];
  unsigned total = 0;
  while (total < max && stashHead_ < stash_.size()) {
    out[2 * total] = static_cast<double>(stash_[stashHead_].first);
    out[2 * total + 1] = stash_[stashHead_].second;
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
      out[2 * (total + i)] = static_cast<double>(io_uring_cqe_get_data64(cqes[i]));
      out[2 * (total + i) + 1] = cqes[i]->res;
    }
    io_uring_cq_advance(&ring_, got);
    total += got;
  }
  return total;
}

}  // namespace vublk
