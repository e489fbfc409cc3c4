// Session: one frontend connection's data plane, as a JS object: the N-API
// glue and the rings. It owns the virtqueues with their kick/call/err
// eventfds; guest memory is its BufferTable's, the io_uring for the disk its
// DiskQueue's. JS decides everything; this class moves bytes:
//
//   kick eventfd ---> pop chains ---> onChains(q, n, segs)       one call per batch
//   JS submit(n) ---> io_uring SQEs                              one call per batch
//   uring eventfd --> reap CQEs  ---> onCompletions(n)           one call per batch
//   JS pushUsed(q, n) -> status bytes, used ring, call eventfd   one call per batch
//   JS poll(maxNs) --> the pop and reap above without waiting for an eventfd
//
// Shared arrays (layouts in shared-arrays.h) carry every batch, so no JS
// object is made per request. The methods defined here are the thin ones;
// session.cc holds set-up and teardown, session-rings.cc the rings and the
// event handlers, session-poll.cc the bounded busy poll.
#pragma once

#include <napi.h>
#include <uv.h>

#include <memory>
#include <string>
#include <vector>

#include "buffer-table.h"
#include "disk-queue.h"
#include "errno-error.h"
#include "inflight.h"
#include "notifier-fd.h"
#include "poll-handle.h"
#include "shared-arrays.h"
#include "split-virtqueue.h"
#include "unique-fd.h"

namespace vublk {

struct SharedArray {
  Napi::Reference<Napi::TypedArray> ref;
  void* data = nullptr;
  size_t length = 0;  // elements
};

class Session;

struct Vring {
  SplitVirtqueue vq;
  UniqueFd kickFd;
  UniqueFd callFd;
  UniqueFd errFd;
  bool enabled = false;
  bool started = false;
  bool paused = false;
  bool pollPending = false;
  PollHandle kickPoll;
  Session* session = nullptr;
  unsigned index = 0;
  // For the metrics endpoint, over the session's life (read by RingCounters).
  double kicks = 0;  // kick eventfd wake-ups that found the counter set
  double calls = 0;  // guest notifications signalled for published used entries

  // Notifies the guest of used entries just published (counted in calls).
  void signalGuest() {
    if (!callFd.valid()) return;
    signalCall(callFd.get());
    calls++;
  }
};

class Session : public Napi::ObjectWrap<Session> {
 public:
  static Napi::Function Define(Napi::Env env);

  // A throw part-way (a bad argument, mmap, io_uring or uv_poll failing)
  // releases whatever was made so far: no destructor runs for an object
  // whose constructor threw.
  explicit Session(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<Session>(info), disk_(buffers_, *this) {
    try {
      init(info);
    } catch (...) {
      teardown();
      throw;
    }
  }

  ~Session() override { teardown(); }

 private:
  Napi::Value RegionBytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(buffers_.mem().totalBytes()));
  }

  // The rings (session-rings.cc).
  Napi::Value SetVringAddr(const Napi::CallbackInfo& info);
  Napi::Value SetVringBase(const Napi::CallbackInfo& info);
  Napi::Value SetVringCall(const Napi::CallbackInfo& info);
  Napi::Value SetVringErr(const Napi::CallbackInfo& info);
  Napi::Value SetVringEnabled(const Napi::CallbackInfo& info);
  Napi::Value SetEventIdx(const Napi::CallbackInfo& info);
  Napi::Value SetIndirect(const Napi::CallbackInfo& info);
  Napi::Value PauseVring(const Napi::CallbackInfo& info);
  Napi::Value PollVring(const Napi::CallbackInfo& info);
  Napi::Value VringStarted(const Napi::CallbackInfo& info);
  Napi::Value RingCounters(const Napi::CallbackInfo& info);

  // --- io_uring ---
  Napi::Value Submit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (destroyed_) throw Napi::Error::New(env, "session is destroyed");
    int64_t n = argInt(info, 0);
    if (n < 0 || static_cast<size_t>(n) * kOpStride > sqOps_.length)
      throw Napi::RangeError::New(env, "submit: count out of range");
    int64_t queued = disk_.submit(env, static_cast<const double*>(sqOps_.data),
                                  static_cast<const double*>(sqIovs_.data), n);
    return Napi::Number::New(env, static_cast<double>(queued));
  }

  // growDisk(bytes): Submit's bound on file ranges follows an online resize.
  Napi::Value GrowDisk(const Napi::CallbackInfo& info) {
    disk_.growDisk(argU64(info, 0));
    return info.Env().Undefined();
  }

  // {ioUring, threadPool, rbd}: native work of this session still
  // outstanding (ops the kernel holds, BLKDISCARDs on libuv's thread pool,
  // ops librbd holds). A closing connection waits for all to reach 0 before
  // destroy().
  Napi::Value Outstanding(const Napi::CallbackInfo& info) {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("ioUring", static_cast<double>(disk_.inflight()));
    o.Set("threadPool", static_cast<double>(disk_.pendingDiscards()));
    o.Set("rbd", static_cast<double>(disk_.rbdInflight()));
    return o;
  }

  // Asks the kernel to cancel every op in flight; their completions (or
  // -ECANCELED) arrive through onCompletions as usual.
  Napi::Value CancelIo(const Napi::CallbackInfo& info) {
    if (destroyed_) return info.Env().Undefined();
    disk_.cancelAll(info.Env());
    return info.Env().Undefined();
  }

  // registerBuffers(bounceBytes = 0): every guest region and the arena's
  // first bounceBytes as fixed buffers (DiskQueue::registerBuffers).
  Napi::Value RegisterBuffers(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (destroyed_) throw Napi::Error::New(env, "session is destroyed");
    uint64_t bounceBytes = info.Length() > 0 && !info[0].IsUndefined() ? argU64(info, 0) : 0;
    return Napi::Number::New(env, static_cast<double>(disk_.registerBuffers(env, bounceBytes)));
  }

  Napi::Value UnregisterBuffers(const Napi::CallbackInfo& info) {
    disk_.unregisterBuffers();
    return info.Env().Undefined();
  }

  Napi::Value WriteGuest(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (destroyed_) throw Napi::Error::New(env, "session is destroyed");
    uint64_t bufId = argU64(info, 0);
    uint64_t off = argU64(info, 1);
    if (!buffers_.writeGuest(env, bufId, off, info[2].As<Napi::Uint8Array>())) guestFaulted(-1);
    return env.Undefined();
  }

  // readGuest(bufId, offset, dst): see BufferTable::readGuest.
  Napi::Value ReadGuest(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (destroyed_) throw Napi::Error::New(env, "session is destroyed");
    Napi::Uint8Array dst = info[2].As<Napi::Uint8Array>();
    double bufId = info[0].As<Napi::Number>().DoubleValue();
    if (!buffers_.readGuest(env, bufId, info[1], dst)) guestFaulted(-1);
    return env.Undefined();
  }

  // copy(n): n copies from arrays.copies (see BufferTable::copy).
  Napi::Value Copy(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (destroyed_) throw Napi::Error::New(env, "session is destroyed");
    int64_t n = argInt(info, 0);
    if (n < 0 || static_cast<size_t>(n) * kCopyStride > copies_.length)
      throw Napi::RangeError::New(env, "copy: count out of range");
    if (!buffers_.copy(env, static_cast<const double*>(copies_.data), n)) guestFaulted(-1);
    return env.Undefined();
  }

  // session.cc: set-up and teardown, regions, the inflight region.
  void init(const Napi::CallbackInfo& info);
  void bind(Napi::Env env, Napi::Object arrays, const char* name, napi_typedarray_type type,
            SharedArray& out);
  Vring& vring(const Napi::CallbackInfo& info);
  void teardown();
  Napi::Value AddRegion(const Napi::CallbackInfo& info);
  Napi::Value RemoveRegion(const Napi::CallbackInfo& info);
  Napi::Value ClearRegions(const Napi::CallbackInfo& info);
  void requirePrivateMemory(Napi::Env env);
  Napi::Value Regions(const Napi::CallbackInfo& info);
  Napi::Value SetInflight(const Napi::CallbackInfo& info);
  Napi::Value ClearInflight(const Napi::CallbackInfo& info);
  void requireStopped(Napi::Env env, const char* what);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  void guestFaulted(int q);

  // session-rings.cc: ring set-up, notifier fds, pushUsed, the event handlers.
  Napi::Value SetVringNum(const Napi::CallbackInfo& info);
  Napi::Value StopVring(const Napi::CallbackInfo& info);
  void setFd(const Napi::CallbackInfo& info, UniqueFd Vring::*field);
  Napi::Value SetVringKick(const Napi::CallbackInfo& info);
  Napi::Value StartVring(const Napi::CallbackInfo& info);
  Napi::Value PushUsed(const Napi::CallbackInfo& info);
  static void OnKick(uv_poll_t* h, int status, int events);
  void ringBroken(Vring& v, const std::string& err);
  unsigned deliver(Vring& v);
  unsigned deliverPending();
  unsigned deliverOne(Vring& v);
  static void OnUringEvent(uv_poll_t* h, int, int);
  unsigned reapCompletions();

  // session-poll.cc: bounded busy polling of the rings and the uring.
  Napi::Value Poll(const Napi::CallbackInfo& info);
  unsigned pollOnce();
  void suppressNotify(bool on);

  BufferTable buffers_;  // guest memory, bounce arena, zero buffer; see guestFaulted()
  DiskQueue disk_;       // after buffers_: it reads them
  InflightRegion inflight_;  // before vrings_: their queues point into it
  std::vector<std::unique_ptr<Vring>> vrings_;
  uv_loop_t* loop_ = nullptr;
  PollHandle uringPoll_;
  PollHandle rbdPoll_;  // the RBD queue's completions, on an RBD image
  unsigned maxQueueSize_ = 0;
  bool destroyed_ = false;
  bool delivering_ = false;
  PopBatch batch_{};
  SharedArray chains_, headers_, segs_, sqOps_, sqIovs_, cqes_, used_, copies_;
  Napi::ObjectReference callbacks_;
  Napi::ObjectReference self_;
  Napi::FunctionReference onChains_, onCompletions_, onViolation_;
};

}  // namespace vublk
