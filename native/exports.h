// Each file registers its own exports.
#pragma once

#include <napi.h>

namespace vublk {
void InitUnixSocket(Napi::Env env, Napi::Object exports);
void InitFdWatcher(Napi::Env env, Napi::Object exports);
void InitMemfd(Napi::Env env, Napi::Object exports);
void InitSharedGuestMemory(Napi::Env env, Napi::Object exports);
void InitSession(Napi::Env env, Napi::Object exports);
void InitDiskProbe(Napi::Env env, Napi::Object exports);
void InitNotifierFd(Napi::Env env, Napi::Object exports);
void InitSdNotify(Napi::Env env, Napi::Object exports);
void InitExitDeadline(Napi::Env env, Napi::Object exports);
void InitFileLock(Napi::Env env, Napi::Object exports);
void InitRbdImage(Napi::Env env, Napi::Object exports);
}  // namespace vublk
