// vhost-user socket plumbing: listen/connect/accept and messages with fds
// (SCM_RIGHTS). Every fd received is owned by the caller from the moment this
// returns, or closed here if the message cannot be delivered whole.
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "errno-error.h"
#include "exports.h"
#include "unique-fd.h"

namespace vublk {

namespace {

constexpr unsigned kMaxFdsPerMsg = 32;

sockaddr_un makeAddr(Napi::Env env, const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) throwErrno(env, ENAMETOOLONG, "bind");
  memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

Napi::Value ListenUnix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  int backlog = static_cast<int>(argInt(info, 1));
  sockaddr_un addr = makeAddr(env, path);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) throwErrno(env, errno, "socket");
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) throwErrno(env, errno, "bind");
  if (listen(fd.get(), backlog) != 0) throwErrno(env, errno, "listen");
  return Napi::Number::New(env, fd.release());
}

Napi::Value ConnectUnix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  sockaddr_un addr = makeAddr(env, path);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) throwErrno(env, errno, "socket");
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) throwErrno(env, errno, "connect");
  int fl = fcntl(fd.get(), F_GETFL);
  fcntl(fd.get(), F_SETFL, fl | O_NONBLOCK);
  return Napi::Number::New(env, fd.release());
}

Napi::Value AcceptUnix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int lfd = static_cast<int>(argInt(info, 0));
  int fd;
  do {
    fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED)
      return Napi::Number::New(env, -1);
    throwErrno(env, errno, "accept4");
  }
  return Napi::Number::New(env, fd);
}

// recvMsg(fd, buf, offset, length, maxFds) -> {bytes, fds, fdsTruncated}
Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(argInt(info, 0));
  Napi::Uint8Array buf = info[1].As<Napi::Uint8Array>();
  uint64_t off = argU64(info, 2);
  uint64_t len = argU64(info, 3);
  uint64_t maxFds = argU64(info, 4);
  if (off > buf.ByteLength() || len > buf.ByteLength() - off)
    throw Napi::RangeError::New(env, "recvMsg: range outside the buffer");
  if (maxFds > kMaxFdsPerMsg) maxFds = kMaxFdsPerMsg;

  iovec iov{buf.Data() + off, static_cast<size_t>(len)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMsg)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  // Always accept the full control space: fds beyond maxFds are received and
  // closed here rather than left to MSG_CTRUNC (which would leak nothing but
  // would hide how many were sent).
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) n = -1;
    else throwErrno(env, errno, "recvmsg");
  }
  std::vector<UniqueFd> fds;  // owned from here until handed to JS
  // On failure the kernel leaves msg_controllen as we set it: nothing to parse.
  if (n < 0) msg.msg_controllen = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int rfd;
      memcpy(&rfd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds.emplace_back(rfd);
    }
  }
  bool truncated = (msg.msg_flags & MSG_CTRUNC) || fds.size() > maxFds;
  Napi::Array jsFds = Napi::Array::New(env);
  if (!truncated) {  // else fds' destructors close them all
    for (size_t i = 0; i < fds.size(); i++) jsFds.Set(static_cast<uint32_t>(i), fds[i].get());
    for (UniqueFd& f : fds) f.release();
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("bytes", Napi::Number::New(env, static_cast<double>(n)));
  r.Set("fds", jsFds);
  r.Set("fdsTruncated", Napi::Boolean::New(env, truncated));
  return r;
}

// The fds a JS array names, at most kMaxFdsPerMsg of them.
std::vector<int> fdList(Napi::Env env, Napi::Array jsFds, const char* who) {
  if (jsFds.Length() > kMaxFdsPerMsg) throw Napi::RangeError::New(env, std::string(who) + ": too many fds");
  std::vector<int> fds;
  for (uint32_t i = 0; i < jsFds.Length(); i++) fds.push_back(jsFds.Get(i).As<Napi::Number>().Int32Value());
  return fds;
}

// Attaches fds to msg as SCM_RIGHTS in control (room for kMaxFdsPerMsg).
void attachFds(msghdr& msg, char* control, const std::vector<int>& fds) {
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
}

// sendMsg(fd, buf, fds, timeoutMs): all bytes, fds with the first byte.
Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(argInt(info, 0));
  Napi::Uint8Array buf = info[1].As<Napi::Uint8Array>();
  Napi::Array jsFds = info[2].As<Napi::Array>();
  int timeoutMs = static_cast<int>(argInt(info, 3));
  std::vector<int> fds = fdList(env, jsFds, "sendMsg");

  size_t sent = 0;
  size_t total = buf.ByteLength();
  bool fdsSent = fds.empty();
  while (sent < total || !fdsSent) {
    iovec iov{buf.Data() + sent, total - sent};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMsg)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (!fdsSent) attachFds(msg, control, fds);
    ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        pollfd p{fd, POLLOUT, 0};
        int pr = poll(&p, 1, timeoutMs);
        if (pr == 0) throwErrno(env, ETIMEDOUT, "sendmsg");
        if (pr < 0 && errno != EINTR) throwErrno(env, errno, "poll");
        continue;
      }
      throwErrno(env, errno, "sendmsg");
    }
    fdsSent = true;
    sent += static_cast<size_t>(n);
  }
  return env.Undefined();
}

// sendSome(fd, buf, offset, length, fds?) -> bytes sent now (0 if the
// socket is full). Never waits: whatever does not fit is the caller's to
// queue. fds (still the caller's) travel with the first byte sent.
Napi::Value SendSome(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(argInt(info, 0));
  Napi::Uint8Array buf = info[1].As<Napi::Uint8Array>();
  uint64_t off = argU64(info, 2);
  uint64_t len = argU64(info, 3);
  if (off > buf.ByteLength() || len > buf.ByteLength() - off)
    throw Napi::RangeError::New(env, "sendSome: range outside the buffer");
  std::vector<int> fds;
  if (info.Length() > 4 && info[4].IsArray()) fds = fdList(env, info[4].As<Napi::Array>(), "sendSome");
  if (!fds.empty() && len == 0) throw Napi::RangeError::New(env, "sendSome: fds need a byte to travel with");
  iovec iov{buf.Data() + off, static_cast<size_t>(len)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMsg)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) attachFds(msg, control, fds);
  ssize_t n;
  do {
    n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, 0);
    throwErrno(env, errno, "send");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// socketInfo(fd) -> {unix, stream, listening, address}: what a socket handed
// over by a supervisor is. address is the bound path, "@name" for an
// abstract name, "" if unbound. Throws ENOTSOCK/EBADF for anything else.
Napi::Value SocketInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(argInt(info, 0));
  int domain = 0, type = 0, accepting = 0;
  socklen_t olen = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &olen) != 0) throwErrno(env, errno, "getsockopt");
  olen = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &olen) != 0) throwErrno(env, errno, "getsockopt");
  olen = sizeof accepting;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &olen) != 0) throwErrno(env, errno, "getsockopt");
  std::string address;
  sockaddr_un addr{};
  socklen_t alen = sizeof addr;
  if (domain == AF_UNIX && getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &alen) == 0 &&
      alen > offsetof(sockaddr_un, sun_path)) {
    size_t n = alen - offsetof(sockaddr_un, sun_path);
    if (addr.sun_path[0] == '\0') {
      address = "@" + std::string(addr.sun_path + 1, n - 1);
    } else {
      address = std::string(addr.sun_path, strnlen(addr.sun_path, n));
    }
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("unix", Napi::Boolean::New(env, domain == AF_UNIX));
  r.Set("stream", Napi::Boolean::New(env, type == SOCK_STREAM));
  r.Set("listening", Napi::Boolean::New(env, accepting != 0));
  r.Set("address", Napi::String::New(env, address));
  return r;
}

// adoptFd(fd): makes an inherited fd non-blocking and close-on-exec, as every
// fd vublk opens itself is.
Napi::Value AdoptFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(argInt(info, 0));
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) throwErrno(env, errno, "fcntl");
  int fdfl = fcntl(fd, F_GETFD);
  if (fdfl < 0 || fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) != 0) throwErrno(env, errno, "fcntl");
  return env.Undefined();
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  int fd = static_cast<int>(argInt(info, 0));
  if (fd >= 0) close(fd);
  return info.Env().Undefined();
}

}  // namespace

void InitUnixSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("listenUnix", Napi::Function::New(env, ListenUnix));
  exports.Set("connectUnix", Napi::Function::New(env, ConnectUnix));
  exports.Set("acceptUnix", Napi::Function::New(env, AcceptUnix));
  exports.Set("recvMsg", Napi::Function::New(env, RecvMsg));
  exports.Set("sendMsg", Napi::Function::New(env, SendMsg));
  exports.Set("sendSome", Napi::Function::New(env, SendSome));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd));
  exports.Set("socketInfo", Napi::Function::New(env, SocketInfo));
  exports.Set("adoptFd", Napi::Function::New(env, AdoptFd));
}

}  // namespace vublk
