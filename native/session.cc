// Session: one frontend connection's data plane, as a JS object. It owns the
// guest memory maps, the virtqueues with their kick/call/err eventfds, and an
// io_uring for the disk. JS decides everything; this file moves bytes:
//
//   kick eventfd ---> pop chains ---> onChains(q, n, segs)       one call per batch
//   JS submit(n) ---> io_uring SQEs                              one call per batch
//   uring eventfd --> reap CQEs  ---> onCompletions(n)           one call per batch
//   JS pushUsed(q, n) -> status bytes, used ring, call eventfd   one call per batch
//
// Shared arrays (layouts in src/native/binding.ts) carry every batch, so no
// JS object is made per request.
#include <unistd.h>
#include <uv.h>

#include <memory>
#include <vector>

#include "buffer-table.h"
#include "disk-queue.h"
#include "errno-error.h"
#include "exports.h"
#include "guest-access.h"
#include "guest-memory.h"
#include "js-callback.h"
#include "notifier-fd.h"
#include "split-virtqueue.h"

namespace vublk {

namespace {

constexpr unsigned kCqeStride = 2;
constexpr unsigned kUsedStride = 5;
constexpr unsigned kMaxQueues = 64;

struct SharedArray {
  Napi::Reference<Napi::TypedArray> ref;
  void* data = nullptr;
  size_t length = 0;  // elements
};

void closeFd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

class Session;

struct Vring {
  SplitVirtqueue vq;
  int kickFd = -1;
  int callFd = -1;
  int errFd = -1;
  bool enabled = false;
  bool started = false;
  bool paused = false;
  bool pollPending = false;
  uv_poll_t* kickPoll = nullptr;
  Session* session = nullptr;
  unsigned index = 0;
};

void closePoll(uv_poll_t*& p) {
  if (!p) return;
  uv_poll_stop(p);
  p->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(p),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
  p = nullptr;
}

class Session : public Napi::ObjectWrap<Session> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(
        env, "Session",
        {InstanceMethod<&Session::AddRegion>("addRegion"),
         InstanceMethod<&Session::RemoveRegion>("removeRegion"),
         InstanceMethod<&Session::ClearRegions>("clearRegions"),
         InstanceMethod<&Session::RegionCount>("regionCount"),
         InstanceMethod<&Session::SetVringNum>("setVringNum"),
         InstanceMethod<&Session::SetVringAddr>("setVringAddr"),
         InstanceMethod<&Session::SetVringBase>("setVringBase"),
         InstanceMethod<&Session::StopVring>("stopVring"),
         InstanceMethod<&Session::SetVringKick>("setVringKick"),
         InstanceMethod<&Session::SetVringCall>("setVringCall"),
         InstanceMethod<&Session::SetVringErr>("setVringErr"),
         InstanceMethod<&Session::SetVringEnabled>("setVringEnabled"),
         InstanceMethod<&Session::SetEventIdx>("setEventIdx"),
         InstanceMethod<&Session::SetIndirect>("setIndirect"),
         InstanceMethod<&Session::StartVring>("startVring"),
         InstanceMethod<&Session::PauseVring>("pauseVring"),
         InstanceMethod<&Session::PollVring>("pollVring"),
         InstanceMethod<&Session::VringStarted>("vringStarted"),
         InstanceMethod<&Session::PushUsed>("pushUsed"),
         InstanceMethod<&Session::WriteGuest>("writeGuest"),
         InstanceMethod<&Session::ReadGuest>("readGuest"),
         InstanceMethod<&Session::Submit>("submit"),
         InstanceMethod<&Session::Copy>("copy"),
         InstanceMethod<&Session::RegisterBuffers>("registerBuffers"),
         InstanceMethod<&Session::UnregisterBuffers>("unregisterBuffers"),
         InstanceMethod<&Session::Outstanding>("outstanding"),
         InstanceMethod<&Session::CancelIo>("cancelIo"),
         InstanceMethod<&Session::Destroy>("destroy")});
  }

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
  void init(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t queues = argInt(info, 0);
    int64_t maxQueueSize = argInt(info, 1);
    int diskFd = static_cast<int>(argInt(info, 2));
    int64_t entries = argInt(info, 3);
    uint64_t bounceBytes = argU64(info, 4);
    if (queues < 1 || queues > kMaxQueues) throw Napi::RangeError::New(env, "queues out of range");
    if (maxQueueSize < 1 || maxQueueSize > kMaxQueueSize)
      throw Napi::RangeError::New(env, "maxQueueSize out of range");
    if (entries < 1 || entries > 32768) throw Napi::RangeError::New(env, "uringEntries out of range");
    // Every op's file range is checked against the disk's size in Submit.
    uint64_t diskBytes = argU64(info, 7);
    bool blockDevice = info[8].ToBoolean();
    maxQueueSize_ = static_cast<unsigned>(maxQueueSize);

    if (bounceBytes == 0 || bounceBytes > kMaxBounceBytes || bounceBytes % 4096)
      throw Napi::RangeError::New(env, "bounceBytes must be a multiple of 4096 in 4096..4 GiB");
    Napi::Object arrays = info[5].As<Napi::Object>();
    bind(env, arrays, "chains", napi_float64_array, chains_);
    bind(env, arrays, "headers", napi_uint8_array, headers_);
    bind(env, arrays, "segs", napi_float64_array, segs_);
    bind(env, arrays, "sqOps", napi_float64_array, sqOps_);
    bind(env, arrays, "sqIovs", napi_float64_array, sqIovs_);
    bind(env, arrays, "cqes", napi_float64_array, cqes_);
    bind(env, arrays, "used", napi_float64_array, used_);
    bind(env, arrays, "copies", napi_float64_array, copies_);
    unsigned maxChains = static_cast<unsigned>(chains_.length / kChainStride);
    if (headers_.length < static_cast<size_t>(maxChains) * kHeaderBytes)
      throw Napi::RangeError::New(env, "headers array too small for chains");
    if (segs_.length / kSegStride < kMaxChainSegs)
      throw Napi::RangeError::New(env, "segs array smaller than one chain's worth");
    batch_.chains = static_cast<double*>(chains_.data);
    batch_.headers = static_cast<uint8_t*>(headers_.data);
    batch_.segs = static_cast<double*>(segs_.data);
    batch_.maxChains = maxChains;
    batch_.maxSegs = static_cast<unsigned>(segs_.length / kSegStride);

    Napi::Object cbs = info[6].As<Napi::Object>();
    callbacks_ = Napi::Persistent(cbs);
    onChains_ = Napi::Persistent(cbs.Get("onChains").As<Napi::Function>());
    onCompletions_ = Napi::Persistent(cbs.Get("onCompletions").As<Napi::Function>());
    onViolation_ = Napi::Persistent(cbs.Get("onViolation").As<Napi::Function>());

    buffers_.init(env, bounceBytes);

    napi_get_uv_event_loop(env, &loop_);
    disk_.init(env, loop_, diskFd, diskBytes, blockDevice, static_cast<unsigned>(entries),
               sqIovs_.length / kIovStride);
    uringPoll_ = new uv_poll_t;
    int rc = uv_poll_init(loop_, uringPoll_, disk_.uring().eventFd());
    if (rc != 0) {
      delete uringPoll_;
      uringPoll_ = nullptr;
      throwErrno(env, -rc, "uv_poll_init");
    }
    uringPoll_->data = this;
    uv_poll_start(uringPoll_, UV_READABLE, OnUringEvent);

    vrings_.resize(static_cast<size_t>(queues));
    for (size_t i = 0; i < vrings_.size(); i++) {
      vrings_[i] = std::make_unique<Vring>();
      vrings_[i]->session = this;
      vrings_[i]->index = static_cast<unsigned>(i);
    }
    // The uring poll keeps this object alive until destroy().
    self_ = Napi::Persistent(Value());
  }

  void bind(Napi::Env env, Napi::Object arrays, const char* name, napi_typedarray_type type,
            SharedArray& out) {
    Napi::Value v = arrays.Get(name);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
      throw Napi::TypeError::New(env, std::string("arrays.") + name + " has the wrong type");
    Napi::TypedArray ta = v.As<Napi::TypedArray>();
    out.ref = Napi::Persistent(ta);
    out.data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    out.length = ta.ElementLength();
  }

  Vring& vring(const Napi::CallbackInfo& info) {
    int64_t q = argInt(info, 0);
    if (destroyed_) throw Napi::Error::New(info.Env(), "session is destroyed");
    if (q < 0 || static_cast<size_t>(q) >= vrings_.size())
      throw Napi::RangeError::New(info.Env(), "queue index out of range");
    return *vrings_[static_cast<size_t>(q)];
  }

  void teardown() {
    if (destroyed_) return;
    destroyed_ = true;
    for (auto& v : vrings_) {
      if (!v) continue;  // a constructor that threw while making the rings
      closePoll(v->kickPoll);
      closeFd(v->kickFd);
      closeFd(v->callFd);
      closeFd(v->errFd);
      v->started = false;
    }
    closePoll(uringPoll_);
    // JS destroys only once outstanding() is 0 (src/vhost-user/drain.ts),
    // except when the daemon exits. Then exiting the ring cancels what it
    // can and the kernel finishes the rest in the background; pages under
    // O_DIRECT I/O stay pinned by the kernel, so unmapping below is safe.
    disk_.close();
    buffers_.release();
  }

  // --- memory ---
  Napi::Value AddRegion(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    // Owned at once: any argument below that throws still closes it.
    UniqueFd fd(static_cast<int>(argInt(info, 0)));
    if (destroyed_) throw Napi::Error::New(env, "session is destroyed");
    uint64_t gpa = argU64(info, 1), size = argU64(info, 2), uva = argU64(info, 3), off = argU64(info, 4);
    std::string err;
    int id = buffers_.mem().add(fd.release(), gpa, size, uva, off, err);  // closes it, mapped or not
    if (id < 0) throw Napi::Error::New(env, err);
    return Napi::Number::New(env, id);
  }

  Napi::Value RemoveRegion(const Napi::CallbackInfo& info) {
    // Fixed buffers point into the mapping being removed: drop them first.
    disk_.unregisterBuffers();
    bool ok = !destroyed_ && buffers_.mem().remove(argU64(info, 0), argU64(info, 1));
    return Napi::Boolean::New(info.Env(), ok);
  }

  Napi::Value ClearRegions(const Napi::CallbackInfo& info) {
    disk_.unregisterBuffers();
    for (auto& v : vrings_) v->vq.unmap();
    buffers_.mem().clear();
    return info.Env().Undefined();
  }

  Napi::Value RegionCount(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), buffers_.mem().count());
  }

  // --- vrings ---
  Napi::Value SetVringNum(const Napi::CallbackInfo& info) {
    Vring& v = vring(info);
    int64_t num = argInt(info, 1);
    if (num < 1 || num > maxQueueSize_ || (num & (num - 1)))
      throw Napi::RangeError::New(info.Env(), "ring size out of range");
    v.vq.setNum(static_cast<uint16_t>(num));
    return info.Env().Undefined();
  }

  Napi::Value SetVringAddr(const Napi::CallbackInfo& info) {
    Vring& v = vring(info);
    v.vq.setAddr(argU64(info, 1), argU64(info, 2), argU64(info, 3));
    return info.Env().Undefined();
  }

  Napi::Value SetVringBase(const Napi::CallbackInfo& info) {
    Vring& v = vring(info);
    v.vq.setBase(static_cast<uint16_t>(argInt(info, 1)));
    return info.Env().Undefined();
  }

  Napi::Value StopVring(const Napi::CallbackInfo& info) {
    Vring& v = vring(info);
    closePoll(v.kickPoll);
    closeFd(v.kickFd);
    closeFd(v.callFd);
    v.started = false;
    v.vq.unmap();
    return Napi::Number::New(info.Env(), v.vq.lastAvail());
  }

  // Takes fd (owned from here on, closed on every throw) as a notifier of
  // the ring, non-blocking so the loop thread can never block on it.
  void setFd(const Napi::CallbackInfo& info, int Vring::*field) {
    UniqueFd fd(static_cast<int>(argInt(info, 1)));
    Vring& v = vring(info);
    int rc = fd.get() >= 0 ? setNonBlocking(fd.get()) : 0;
    if (rc < 0) throwErrno(info.Env(), -rc, "fcntl");
    if (field == &Vring::kickFd) closePoll(v.kickPoll);
    closeFd(v.*field);
    v.*field = fd.release();
  }

  Napi::Value SetVringKick(const Napi::CallbackInfo& info) {
    setFd(info, &Vring::kickFd);
    vring(info).started = false;
    return info.Env().Undefined();
  }
  Napi::Value SetVringCall(const Napi::CallbackInfo& info) {
    setFd(info, &Vring::callFd);
    return info.Env().Undefined();
  }
  Napi::Value SetVringErr(const Napi::CallbackInfo& info) {
    setFd(info, &Vring::errFd);
    return info.Env().Undefined();
  }

  Napi::Value SetVringEnabled(const Napi::CallbackInfo& info) {
    Vring& v = vring(info);
    v.enabled = info[1].ToBoolean();
    return info.Env().Undefined();
  }

  Napi::Value SetEventIdx(const Napi::CallbackInfo& info) {
    for (auto& v : vrings_) v->vq.setEventIdx(info[0].ToBoolean());
    return info.Env().Undefined();
  }

  Napi::Value SetIndirect(const Napi::CallbackInfo& info) {
    for (auto& v : vrings_) v->vq.setIndirect(info[0].ToBoolean());
    return info.Env().Undefined();
  }

  Napi::Value StartVring(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Vring& v = vring(info);
    if (v.kickFd < 0) throw Napi::Error::New(env, "ring has no kick fd");
    std::string err;
    if (!v.vq.map(buffers_.mem(), err)) throw Napi::Error::New(env, err);
    if (!v.kickPoll) {
      v.kickPoll = new uv_poll_t;
      int rc = uv_poll_init(loop_, v.kickPoll, v.kickFd);
      if (rc != 0) {
        delete v.kickPoll;
        v.kickPoll = nullptr;
        throwErrno(env, -rc, "uv_poll_init");
      }
      v.kickPoll->data = &v;
      uv_poll_start(v.kickPoll, UV_READABLE | UV_DISCONNECT, OnKick);
    }
    v.started = true;
    return env.Undefined();
  }

  Napi::Value PauseVring(const Napi::CallbackInfo& info) {
    Vring& v = vring(info);
    v.paused = info[1].ToBoolean();
    return info.Env().Undefined();
  }

  Napi::Value PollVring(const Napi::CallbackInfo& info) {
    Vring& v = vring(info);
    deliver(v);
    return info.Env().Undefined();
  }

  Napi::Value VringStarted(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), vring(info).started);
  }

  Napi::Value PushUsed(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Vring& v = vring(info);
    int64_t n = argInt(info, 1);
    if (n < 0 || static_cast<size_t>(n) * kUsedStride > used_.length)
      throw Napi::RangeError::New(env, "pushUsed: count out of range");
    if (!v.vq.mapped()) throw Napi::Error::New(env, "pushUsed: ring is not running");
    const double* used = static_cast<const double*>(used_.data);
    const double* u = used;
    for (int64_t i = 0; i < n; i++, u += kUsedStride) {
      double head = u[0];
      if (!(head >= 0 && head < v.vq.num())) throw Napi::RangeError::New(env, "pushUsed: bad head");
      if (!(u[1] >= 0 && u[1] <= UINT32_MAX))
        throw Napi::RangeError::New(env, "pushUsed: bad used length");
      if (u[2] >= 0 && !(u[2] < kBounceBufId && buffers_.ptr(u[2], u[3], 1)))
        throw Napi::RangeError::New(env, "pushUsed: status byte outside guest memory");
    }
    if (buffers_.faulted()) return env.Undefined();  // the ring is abandoned with the connection
    bool notify = false;
    if (!guardedGuestAccess(buffers_.mem(), buffers_.fault(), [&] {
          u = used;
          for (int64_t i = 0; i < n; i++, u += kUsedStride) {
            if (u[2] >= 0) *buffers_.ptr(u[2], u[3], 1) = static_cast<uint8_t>(u[4]);
            v.vq.addUsed(static_cast<uint32_t>(u[0]), static_cast<uint32_t>(u[1]));
          }
          notify = v.vq.publish();
        })) {
      guestFaulted(static_cast<int>(argInt(info, 0)));
      return env.Undefined();
    }
    if (notify && v.callFd >= 0) signalCall(v.callFd);
    return env.Undefined();
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

  // {ioUring, threadPool}: native work of this session still outstanding
  // (ops the kernel holds, BLKDISCARDs on libuv's thread pool). A closing
  // connection waits for both to reach 0 before destroy().
  Napi::Value Outstanding(const Napi::CallbackInfo& info) {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("ioUring", static_cast<double>(disk_.inflight()));
    o.Set("threadPool", static_cast<double>(disk_.pendingDiscards()));
    return o;
  }

  // Asks the kernel to cancel every op in flight; their completions (or
  // -ECANCELED) arrive through onCompletions as usual.
  Napi::Value CancelIo(const Napi::CallbackInfo& info) {
    if (destroyed_) return info.Env().Undefined();
    disk_.cancelAll(info.Env());
    return info.Env().Undefined();
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

  // Registers every guest region as fixed buffers (DiskQueue::registerBuffers).
  Napi::Value RegisterBuffers(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (destroyed_) throw Napi::Error::New(env, "session is destroyed");
    return Napi::Number::New(env, static_cast<double>(disk_.registerBuffers(env)));
  }

  Napi::Value UnregisterBuffers(const Napi::CallbackInfo& info) {
    disk_.unregisterBuffers();
    return info.Env().Undefined();
  }

  Napi::Value Destroy(const Napi::CallbackInfo& info) {
    teardown();
    if (!self_.IsEmpty()) self_.Reset();
    // The callbacks close over the connection that holds this object: kept
    // as strong references they would make the session, its arrays and the
    // whole connection reachable for ever. Nothing calls them once destroyed_.
    callbacks_.Reset();
    onChains_.Reset();
    onCompletions_.Reset();
    onViolation_.Reset();
    return info.Env().Undefined();
  }

  // --- event handlers ---
  static void OnKick(uv_poll_t* h, int status, int events) {
    auto* v = static_cast<Vring*>(h->data);
    if (!v) return;
    std::string err;
    KickState k = status < 0 || (events & UV_DISCONNECT) ? KickState::kBroken : drainKick(v->kickFd, err);
    Napi::HandleScope scope(v->session->Env());
    // A kick fd at EOF or in error stays readable: polling it would spin.
    if (k == KickState::kBroken) {
      v->session->ringBroken(*v, err.empty() ? "kick fd hung up" : err);
      return;
    }
    v->session->deliver(*v);
  }

  void ringBroken(Vring& v, const std::string& err) {
    closePoll(v.kickPoll);
    v.started = false;
    if (destroyed_) return;
    Napi::Env env = Env();
    callJs(env, onViolation_, callbacks_.Value(), {Napi::Number::New(env, v.index), Napi::String::New(env, err)});
  }

  // Pops and hands chains to JS, batch by batch, until the ring is empty or
  // JS pauses it. Re-entry (JS polling from inside onChains) is a no-op: the
  // outer loop keeps popping.
  void deliver(Vring& v) {
    if (delivering_) {
      // JS asked from inside a delivery: the shared batch arrays are in use.
      // Note it; the outer delivery pops this ring when it is done.
      v.pollPending = true;
      return;
    }
    delivering_ = true;
    deliverOne(v);
    for (bool again = true; again;) {
      again = false;
      for (auto& other : vrings_) {
        if (other->pollPending && !destroyed_) {
          other->pollPending = false;
          deliverOne(*other);
          again = true;
        }
      }
    }
    delivering_ = false;
  }

  void deliverOne(Vring& v) {
    Napi::Env env = Env();
    while (!destroyed_ && !buffers_.faulted() && v.started && v.enabled && !v.paused) {
      batch_.nChains = 0;
      batch_.nSegs = 0;
      std::string err;
      bool ok = false;
      if (!guardedGuestAccess(buffers_.mem(), buffers_.fault(), [&] { ok = v.vq.pop(buffers_.mem(), batch_, err); })) {
        ok = false;
        batch_.nChains = 0;  // abandoned with the connection
        buffers_.markFaulted();
        err = describeGuestFault(buffers_.mem(), buffers_.fault());
      }
      if (batch_.nChains > 0) {
        callJs(env, onChains_, callbacks_.Value(),
               {Napi::Number::New(env, v.index), Napi::Number::New(env, batch_.nChains),
                Napi::Number::New(env, batch_.nSegs)});
      }
      if (!ok) {
        ringBroken(v, err);
        break;
      }
      if (batch_.nChains == 0) break;
    }
  }

  // A guarded access faulted (the frontend shrank a region's file): reports
  // it once to JS, which breaks the connection (q < 0: no queue). From then
  // on the session touches no guest memory and takes no disk I/O.
  void guestFaulted(int q) {
    if (!buffers_.markFaulted()) return;
    Napi::Env env = Env();
    callJs(env, onViolation_, callbacks_.Value(),
           {Napi::Number::New(env, q), Napi::String::New(env, describeGuestFault(buffers_.mem(), buffers_.fault()))});
  }

  static void OnUringEvent(uv_poll_t* h, int, int) {
    auto* s = static_cast<Session*>(h->data);
    if (!s) return;
    Napi::Env env = s->Env();
    Napi::HandleScope scope(env);
    s->disk_.uring().ackEvent();
    unsigned max = static_cast<unsigned>(s->cqes_.length / kCqeStride);
    while (!s->destroyed_) {
      unsigned n = s->disk_.uring().reap(static_cast<double*>(s->cqes_.data), max);
      if (n == 0) break;
      callJs(env, s->onCompletions_, s->callbacks_.Value(), {Napi::Number::New(env, n)});
    }
  }

  BufferTable buffers_;  // guest memory, bounce arena, zero buffer; see guestFaulted()
  DiskQueue disk_;       // after buffers_: it reads them
  std::vector<std::unique_ptr<Vring>> vrings_;
  uv_loop_t* loop_ = nullptr;
  uv_poll_t* uringPoll_ = nullptr;
  unsigned maxQueueSize_ = 0;
  bool destroyed_ = false;
  bool delivering_ = false;
  PopBatch batch_{};
  SharedArray chains_, headers_, segs_, sqOps_, sqIovs_, cqes_, used_, copies_;
  Napi::ObjectReference callbacks_;
  Napi::ObjectReference self_;
  Napi::FunctionReference onChains_, onCompletions_, onViolation_;
};

}  // namespace

void InitSession(Napi::Env env, Napi::Object exports) {
  installGuestFaultHandler();
  exports.Set("Session", Session::Define(env));
  Napi::Object c = Napi::Object::New(env);
  c.Set("CHAIN_STRIDE", kChainStride);
  c.Set("SEG_STRIDE", kSegStride);
  c.Set("OP_STRIDE", kOpStride);
  c.Set("IOV_STRIDE", kIovStride);
  c.Set("CQE_STRIDE", kCqeStride);
  c.Set("USED_STRIDE", kUsedStride);
  c.Set("SEG_WRITE", kSegWrite);
  c.Set("OP_READV", kOpReadv);
  c.Set("OP_WRITEV", kOpWritev);
  c.Set("OP_FSYNC", kOpFsync);
  c.Set("OP_FLAG_FIXED", kOpFlagFixed);
  c.Set("OP_FLAG_DSYNC", kOpFlagDsync);
  c.Set("MAX_CHAIN_DESCS", kMaxChainDescs);
  c.Set("MAX_CHAIN_SEGS", kMaxChainSegs);
  c.Set("COPY_STRIDE", kCopyStride);
  c.Set("BOUNCE_BUF_ID", kBounceBufId);
  c.Set("ZERO_BUF_ID", kZeroBufId);
  c.Set("ZERO_BYTES", static_cast<double>(kZeroBytes));
  c.Set("OP_FALLOCATE", kOpFallocate);
  c.Set("OP_BLKDISCARD", kOpBlkDiscard);
  c.Set("FALLOC_PUNCH", kFallocPunch);
  c.Set("FALLOC_ZERO", kFallocZero);
  exports.Set("constants", c);
}

}  // namespace vublk
