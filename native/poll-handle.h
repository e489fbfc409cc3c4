// PollHandle: the one uv_poll_t lifecycle in native/ (open, start, stop,
// close with the deferred delete libuv requires), for Session and FdWatcher.
#pragma once

#include <uv.h>

namespace vublk {

// Owns at most one uv_poll_t on the loop thread. close() detaches it at once
// (data = nullptr, so a callback already queued sees no owner and returns)
// and libuv frees it after its close callback.
class PollHandle {
 public:
  PollHandle() = default;
  ~PollHandle() { close(); }
  PollHandle(const PollHandle&) = delete;
  PollHandle& operator=(const PollHandle&) = delete;

  bool isOpen() const { return h_ != nullptr; }

  // Watches fd on loop, with data for the callbacks (h->data); 0 or a
  // negative libuv error, when nothing is left open.
  int open(uv_loop_t* loop, int fd, void* data) {
    close();
    auto* h = new uv_poll_t;
    int rc = uv_poll_init(loop, h, fd);
    if (rc != 0) {
      delete h;
      return rc;
    }
    h->data = data;
    h_ = h;
    return 0;
  }
  // Both do nothing on a closed handle.
  void start(int events, uv_poll_cb cb) {
    if (h_) uv_poll_start(h_, events, cb);
  }
  void stop() {
    if (h_) uv_poll_stop(h_);
  }
  void close() {
    if (!h_) return;
    uv_poll_stop(h_);
    h_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(h_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    h_ = nullptr;
  }

 private:
  uv_poll_t* h_ = nullptr;
};

}  // namespace vublk
