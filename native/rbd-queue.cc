// RbdQueue: librbd aio calls, their completion callbacks, reaping (see
// rbd-queue.h).
#include "rbd-queue.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "shared-arrays.h"

namespace vublk {

struct RbdQueue::Op {
  RbdQueue* queue;
  Kind kind;
  uint64_t userData;
  uint64_t len;
  bool flushAfter;  // a DSYNC write whose flush has not been issued yet
  // The op's own copy of its iovecs: rbd_aio_readv with more than one keeps
  // the array's address and only reads it when the data has come, to copy it
  // out (ReadResult::Vector), long after the caller's scratch array has been
  // reused for the next op.
  std::vector<iovec> iov;
};

int RbdQueue::init(std::shared_ptr<RbdHandle> image) {
  image_ = std::move(image);
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return -errno;
  eventFd_.reset(fd);
  return 0;
}

void RbdQueue::start(Kind kind, uint64_t userData, uint64_t off, uint64_t len, const iovec* iov, unsigned iovcnt,
                     bool dsync) {
  auto* op = new Op{this, kind, userData, len, dsync && kind == Kind::kWritev, {}};
  if (iovcnt > 0) op->iov.assign(iov, iov + iovcnt);
  {
    std::lock_guard<std::mutex> g(lock_);
    inflight_++;
  }
  rbd_completion_t c = nullptr;
  int rc = rbd_aio_create_completion(op, &RbdQueue::onComplete, &c);
  if (rc == 0) {
    rbd_image_t img = image_->image;
    switch (kind) {
      case Kind::kReadv: rc = rbd_aio_readv(img, op->iov.data(), static_cast<int>(iovcnt), off, c); break;
      case Kind::kWritev: rc = rbd_aio_writev(img, op->iov.data(), static_cast<int>(iovcnt), off, c); break;
      case Kind::kFlush: rc = rbd_aio_flush(img, c); break;
      case Kind::kDiscard: rc = rbd_aio_discard(img, off, len, c); break;
      case Kind::kWriteZeroes: rc = rbd_aio_write_zeroes(img, off, len, c, 0, 0); break;
    }
    if (rc < 0) rbd_aio_release(c);
  }
  if (rc < 0) finish(op, rc);
}

// On a librbd thread.
void RbdQueue::onComplete(void* completion, void* arg) {
  auto c = static_cast<rbd_completion_t>(completion);
  auto* op = static_cast<Op*>(arg);
  int64_t res = rbd_aio_get_return_value(c);
  rbd_aio_release(c);
  if (res >= 0 && op->flushAfter) {
    // The guest turned the write cache off: the write is done once it is
    // stable, so the flush after it carries the op's completion.
    op->flushAfter = false;
    rbd_completion_t f = nullptr;
    int rc = rbd_aio_create_completion(op, &RbdQueue::onComplete, &f);
    if (rc == 0) {
      rc = rbd_aio_flush(op->queue->image_->image, f);
      if (rc == 0) return;
      rbd_aio_release(f);
    }
    res = rc;
  }
  op->queue->finish(op, res);
}

// Reports op's result and forgets it. After the unlock this queue may be
// gone (close() waits only for inflight_ to reach 0), so nothing follows it.
void RbdQueue::finish(Op* op, int64_t res) {
  int32_t r;
  if (res < 0)
    r = static_cast<int32_t>(res);
  else
    r = op->kind == Kind::kReadv || op->kind == Kind::kWritev ? static_cast<int32_t>(op->len) : 0;
  uint64_t userData = op->userData;
  delete op;
  std::lock_guard<std::mutex> g(lock_);
  done_.emplace_back(userData, r);
  inflight_--;
  uint64_t one = 1;
  ssize_t w = write(eventFd_.get(), &one, sizeof one);
  (void)w;
  if (inflight_ == 0) idle_.notify_all();
}

unsigned RbdQueue::reap(double* out, unsigned max) {
  std::lock_guard<std::mutex> g(lock_);
  unsigned n = 0;
  for (; n < max && n < done_.size(); n++) {
    out[kCqeStride * n] = static_cast<double>(done_[n].first);
    out[kCqeStride * n + 1] = done_[n].second;
  }
  done_.erase(done_.begin(), done_.begin() + n);
  return n;
}

bool RbdQueue::ready() {
  std::lock_guard<std::mutex> g(lock_);
  return !done_.empty();
}

void RbdQueue::ackEvent() {
  uint64_t v;
  ssize_t r = read(eventFd_.get(), &v, sizeof v);
  (void)r;
}

void RbdQueue::close() {
  std::unique_lock<std::mutex> g(lock_);
  idle_.wait(g, [this] { return inflight_ == 0; });
  done_.clear();
  g.unlock();
  eventFd_.reset();
  image_.reset();
}

}  // namespace vublk
