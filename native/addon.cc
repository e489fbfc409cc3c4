// vublk native addon: socket and fd passing, guest memory, split virtqueues,
// io_uring, memfd. Thin and policy-free: src/ decides, this moves bytes.
#include <napi.h>

#include "exports.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  vublk::InitUnixSocket(env, exports);
  vublk::InitFdWatcher(env, exports);
  vublk::InitMemfd(env, exports);
  vublk::InitSharedGuestMemory(env, exports);
  vublk::InitSession(env, exports);
  vublk::InitDiskProbe(env, exports);
  vublk::InitNotifierFd(env, exports);
  vublk::InitSdNotify(env, exports);
  vublk::InitExitDeadline(env, exports);
  vublk::InitFileLock(env, exports);
  vublk::InitRbdImage(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(vublk_native, Init)
