// FdWatcher: one uv_poll per fd. start(events) picks what to watch (a mask of
// UV_READABLE, UV_WRITABLE, UV_DISCONNECT; default readable + disconnect); the
// callback gets the events that fired. Spurious wake-ups are the caller's to
// tolerate (reads and sends return EAGAIN).
#include "errno-error.h"
#include "exports.h"
#include "js-callback.h"
#include "poll-handle.h"

namespace vublk {

namespace {

class FdWatcher : public Napi::ObjectWrap<FdWatcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdWatcher",
                       {InstanceMethod<&FdWatcher::Start>("start"),
                        InstanceMethod<&FdWatcher::Stop>("stop"),
                        InstanceMethod<&FdWatcher::Close>("close")});
  }

  explicit FdWatcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdWatcher>(info) {
    Napi::Env env = info.Env();
    int fd = static_cast<int>(argInt(info, 0));
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    uv_loop_t* loop;
    napi_get_uv_event_loop(env, &loop);
    int rc = handle_.open(loop, fd, this);
    if (rc != 0) throwErrno(env, -rc, "uv_poll_init");
  }

  ~FdWatcher() override { closeHandle(); }

 private:
  void closeHandle() {
    if (!handle_.isOpen()) return;
    handle_.close();
    if (!self_.IsEmpty()) self_.Reset();
  }

  static void OnPoll(uv_poll_t* h, int status, int events) {
    auto* self = static_cast<FdWatcher*>(h->data);
    if (!self) return;
    // An error (e.g. a hang-up) is reported as every event: the caller's
    // reads and sends then fail and say why.
    if (status < 0) events = UV_READABLE | UV_WRITABLE | UV_DISCONNECT;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    callJs(env, self->callback_, self->Value(), {Napi::Number::New(env, events)});
  }

  Napi::Value Start(const Napi::CallbackInfo& info) {
    int events = UV_READABLE | UV_DISCONNECT;
    if (info.Length() > 0 && !info[0].IsUndefined()) {
      events = static_cast<int>(argInt(info, 0)) & (UV_READABLE | UV_WRITABLE | UV_DISCONNECT);
    }
    if (handle_.isOpen()) {
      handle_.start(events, OnPoll);
      // A started watcher keeps its JS object alive.
      if (self_.IsEmpty()) self_ = Napi::Persistent(Value());
    }
    return info.Env().Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    handle_.stop();
    if (!self_.IsEmpty()) self_.Reset();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    closeHandle();
    // The callback usually closes over the object that holds this watcher;
    // as a strong reference it would keep both reachable for ever. A closed
    // watcher never calls it (OnPoll sees no handle data).
    callback_.Reset();
    return info.Env().Undefined();
  }

  Napi::FunctionReference callback_;
  Napi::ObjectReference self_;
  PollHandle handle_;
};

}  // namespace

void InitFdWatcher(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = FdWatcher::Define(env);
  ctor.Set("READABLE", Napi::Number::New(env, UV_READABLE));
  ctor.Set("WRITABLE", Napi::Number::New(env, UV_WRITABLE));
  ctor.Set("DISCONNECT", Napi::Number::New(env, UV_DISCONNECT));
  exports.Set("FdWatcher", ctor);
}

}  // namespace vublk
