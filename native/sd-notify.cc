// sd_notify(3) without libsystemd: one datagram to the service manager's
// NOTIFY_SOCKET. Policy (what to say, when, whether NOTIFY_SOCKET is set) is
// src/daemon/service-notify.ts's; this only sends.
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <string>

#include "errno-error.h"
#include "exports.h"
#include "unique-fd.h"

namespace vublk {

namespace {

// sdNotify(address, message): address is a path, or "@name" for an abstract
// socket (the "@" becomes the leading NUL, as sd_notify does).
Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string address = info[0].As<Napi::String>();
  std::string message = info[1].As<Napi::String>();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  // A path needs its NUL inside sun_path; an abstract name does not.
  bool abstract = !address.empty() && address[0] == '@';
  if (address.size() < 2 || address.size() > sizeof addr.sun_path - (abstract ? 0 : 1))
    throwErrno(env, ENAMETOOLONG, "sd_notify");
  memcpy(addr.sun_path, address.data(), address.size());
  if (abstract) addr.sun_path[0] = '\0';
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size() + (abstract ? 0 : 1));

  UniqueFd fd(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) throwErrno(env, errno, "socket");
  ssize_t n;
  do {
    n = sendto(fd.get(), message.data(), message.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
               reinterpret_cast<sockaddr*>(&addr), len);
  } while (n < 0 && errno == EINTR);
  if (n < 0) throwErrno(env, errno, "sendto");
  return env.Undefined();
}

}  // namespace

void InitSdNotify(Napi::Env env, Napi::Object exports) {
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify));
}

}  // namespace vublk
