// Calling JS from a libuv callback: a handle scope, MakeCallback (so promise
// jobs and nextTicks run after it, as for any I/O callback), and an exception
// thrown by JS is reported as an uncaught exception instead of unwinding
// through libuv.
#pragma once

#include <napi.h>

#include <initializer_list>

namespace vublk {

inline void callJs(Napi::Env env, const Napi::FunctionReference& fn,
                   const Napi::Object& recv, std::initializer_list<napi_value> args) {
  try {
    fn.MakeCallback(recv, args);
  } catch (const Napi::Error& e) {
    napi_fatal_exception(env, e.Value());
  }
}

}  // namespace vublk
