// Native errors have one shape in JS: Error{message, code, errno, syscall}.
#pragma once

#include <napi.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace vublk {

inline const char* errnoCode(int e) {
  switch (e) {
    case EADDRINUSE: return "EADDRINUSE";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EAGAIN: return "EAGAIN";
    case EINVAL: return "EINVAL";
    case ENOMEM: return "ENOMEM";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EPIPE: return "EPIPE";
    case ECONNRESET: return "ECONNRESET";
    case EBADF: return "EBADF";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case ENOSYS: return "ENOSYS";
    case EMFILE: return "EMFILE";
    case ENOTSOCK: return "ENOTSOCK";
    default: return "EUNKNOWN";
  }
}

inline Napi::Error errnoError(Napi::Env env, int e, const char* syscall) {
  Napi::Error err =
      Napi::Error::New(env, std::string(syscall) + " failed: " + strerror(e));
  err.Set("code", Napi::String::New(env, errnoCode(e)));
  err.Set("errno", Napi::Number::New(env, -e));
  err.Set("syscall", Napi::String::New(env, syscall));
  return err;
}

[[noreturn]] inline void throwErrno(Napi::Env env, int e, const char* syscall) {
  throw errnoError(env, e, syscall);
}

// Argument readers: JS validates; these only guard against misuse.
inline int64_t argInt(const Napi::CallbackInfo& info, size_t i) {
  if (i >= info.Length() || !info[i].IsNumber())
    throw Napi::TypeError::New(info.Env(), "expected a number argument");
  return info[i].As<Napi::Number>().Int64Value();
}

inline uint64_t argU64(const Napi::CallbackInfo& info, size_t i) {
  if (i >= info.Length() || !info[i].IsNumber())
    throw Napi::TypeError::New(info.Env(), "expected a number argument");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > 9007199254740992.0)
    throw Napi::RangeError::New(info.Env(), "expected an integer in 0..2^53");
  return static_cast<uint64_t>(d);
}

}  // namespace vublk
