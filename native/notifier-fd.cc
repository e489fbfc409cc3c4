// Kick and call eventfds: non-blocking set-up, draining a kick, signalling a
// call, and fdTarget() for src/ to check what an fd is (see notifier-fd.h).
#include "notifier-fd.h"

#include <fcntl.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "errno-error.h"
#include "exports.h"

namespace vublk {

int setNonBlocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return -errno;
  return 0;
}

KickState drainKick(int fd, std::string& err) {
  uint64_t val;
  ssize_t n;
  do {
    n = read(fd, &val, sizeof val);
  } while (n < 0 && errno == EINTR);
  if (n == sizeof val) return KickState::kKicked;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return KickState::kSpurious;
  if (n < 0) {
    err = std::string("kick fd read failed: ") + strerror(errno);
  } else {
    err = "kick fd read " + std::to_string(n) + " bytes, expected 8";
  }
  return KickState::kBroken;
}

void signalCall(int fd) {
  uint64_t one = 1;
  ssize_t w;
  do {
    w = write(fd, &one, sizeof one);
  } while (w < 0 && errno == EINTR);
  // EAGAIN: the counter is full, an interrupt is pending. Nothing else can
  // fail on an eventfd written with 1, and a call has no one to report to.
}

namespace {

// fdTarget(fd): what /proc/self/fd/N links to ("anon_inode:[eventfd]",
// "pipe:[123]", "/dev/null", ...), or "" if the fd is not open.
Napi::Value FdTarget(const Napi::CallbackInfo& info) {
  int fd = static_cast<int>(argInt(info, 0));
  std::string link = "/proc/self/fd/" + std::to_string(fd);
  char buf[512];
  ssize_t n = fd >= 0 ? readlink(link.c_str(), buf, sizeof buf - 1) : -1;
  return Napi::String::New(info.Env(), n < 0 ? std::string() : std::string(buf, static_cast<size_t>(n)));
}

}  // namespace

void InitNotifierFd(Napi::Env env, Napi::Object exports) {
  exports.Set("fdTarget", Napi::Function::New(env, FdTarget));
}

}  // namespace vublk
