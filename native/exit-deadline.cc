// exitDeadline(ms, message): the process ends at the latest ms from now. A
// thread of its own sleeps, then writes message to stderr and _exit(1)s
// without running anything else, because whatever still holds the process
// then may be a thread blocked in native code (librbd waiting for an OSD
// that is down, at rbd_close or for an op's completion), where no JS timer
// can reach it. Policy (when to arm it, how long) is src/cli/main.ts's.
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "exports.h"

namespace vublk {

namespace {

Napi::Value ExitDeadline(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double ms = info[0].As<Napi::Number>().DoubleValue();
  if (!(ms >= 0 && ms <= 86400000)) throw Napi::RangeError::New(env, "exitDeadline: ms out of range");
  std::string message = info[1].As<Napi::String>();
  std::thread([ms, message] {
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(ms)));
    ssize_t w = write(STDERR_FILENO, message.data(), message.size());
    (void)w;
    _exit(1);
  }).detach();
  return env.Undefined();
}

}  // namespace

void InitExitDeadline(Napi::Env env, Napi::Object exports) {
  exports.Set("exitDeadline", Napi::Function::New(env, ExitDeadline));
}

}  // namespace vublk
