// Session's set-up and teardown, its rings (start, stop, notifier fds,
// pushUsed) and the kick/uring event handlers that deliver batches to JS
// (see session.h).
#include <unistd.h>

#include "exports.h"
#include "guest-access.h"
#include "js-callback.h"
#include "notifier-fd.h"
#include "session.h"

namespace vublk {

namespace {

void closeFd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

void closePoll(uv_poll_t*& p) {
  if (!p) return;
  uv_poll_stop(p);
  p->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(p),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
  p = nullptr;
}

}  // namespace

Napi::Function Session::Define(Napi::Env env) {
  return DefineClass(
      env, "Session",
      {InstanceMethod<&Session::AddRegion>("addRegion"),
       InstanceMethod<&Session::RemoveRegion>("removeRegion"),
       InstanceMethod<&Session::ClearRegions>("clearRegions"),
       InstanceMethod<&Session::RegionBytes>("regionBytes"),
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
       InstanceMethod<&Session::SetInflight>("setInflight"),
       InstanceMethod<&Session::ClearInflight>("clearInflight"),
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
       InstanceMethod<&Session::GrowDisk>("growDisk"),
       InstanceMethod<&Session::CancelIo>("cancelIo"),
       InstanceMethod<&Session::RingCounters>("ringCounters"),
       InstanceMethod<&Session::Destroy>("destroy")});
}

void Session::init(const Napi::CallbackInfo& info) {
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

void Session::bind(Napi::Env env, Napi::Object arrays, const char* name,
                   napi_typedarray_type type, SharedArray& out) {
  Napi::Value v = arrays.Get(name);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
    throw Napi::TypeError::New(env, std::string("arrays.") + name + " has the wrong type");
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  out.ref = Napi::Persistent(ta);
  out.data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  out.length = ta.ElementLength();
}

Vring& Session::vring(const Napi::CallbackInfo& info) {
  int64_t q = argInt(info, 0);
  if (destroyed_) throw Napi::Error::New(info.Env(), "session is destroyed");
  if (q < 0 || static_cast<size_t>(q) >= vrings_.size())
    throw Napi::RangeError::New(info.Env(), "queue index out of range");
  return *vrings_[static_cast<size_t>(q)];
}

void Session::teardown() {
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
  for (auto& v : vrings_)
    if (v) v->vq.setInflight(nullptr);
  inflight_.unmap();
  closePoll(uringPoll_);
  // JS destroys only once outstanding() is 0 (src/vhost-user/drain.ts),
  // except when the daemon exits. Then exiting the ring cancels what it
  // can and the kernel finishes the rest in the background; pages under
  // O_DIRECT I/O stay pinned by the kernel, so unmapping below is safe.
  disk_.close();
  buffers_.release();
}

// --- memory ---
Napi::Value Session::AddRegion(const Napi::CallbackInfo& info) {
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

Napi::Value Session::RemoveRegion(const Napi::CallbackInfo& info) {
  // Fixed buffers point into the mapping being removed: drop them first.
  disk_.unregisterBuffers();
  bool ok = !destroyed_ && buffers_.mem().remove(argU64(info, 0), argU64(info, 1));
  return Napi::Boolean::New(info.Env(), ok);
}

Napi::Value Session::ClearRegions(const Napi::CallbackInfo& info) {
  disk_.unregisterBuffers();
  for (auto& v : vrings_) v->vq.unmap();
  buffers_.mem().clear();
  return info.Env().Undefined();
}

// --- vrings ---
Napi::Value Session::SetVringNum(const Napi::CallbackInfo& info) {
  Vring& v = vring(info);
  int64_t num = argInt(info, 1);
  if (num < 1 || num > maxQueueSize_ || (num & (num - 1)))
    throw Napi::RangeError::New(info.Env(), "ring size out of range");
  v.vq.setNum(static_cast<uint16_t>(num));
  return info.Env().Undefined();
}

Napi::Value Session::StopVring(const Napi::CallbackInfo& info) {
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
void Session::setFd(const Napi::CallbackInfo& info, int Vring::*field) {
  UniqueFd fd(static_cast<int>(argInt(info, 1)));
  Vring& v = vring(info);
  int rc = fd.get() >= 0 ? setNonBlocking(fd.get()) : 0;
  if (rc < 0) throwErrno(info.Env(), -rc, "fcntl");
  if (field == &Vring::kickFd) closePoll(v.kickPoll);
  closeFd(v.*field);
  v.*field = fd.release();
}

Napi::Value Session::SetVringKick(const Napi::CallbackInfo& info) {
  setFd(info, &Vring::kickFd);
  vring(info).started = false;
  return info.Env().Undefined();
}

Napi::Value Session::StartVring(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vring& v = vring(info);
  if (v.kickFd < 0) throw Napi::Error::New(env, "ring has no kick fd");
  std::string err;
  if (!v.vq.map(buffers_.mem(), err)) throw Napi::Error::New(env, err);
  if (buffers_.faulted()) throw Napi::Error::New(env, "guest memory faulted");
  unsigned resubmit = 0;
  bool resynced = false;
  bool ok = false;
  if (!guardedGuestAccess(buffers_.mem(), buffers_.fault(),
                          [&] { ok = v.vq.start(err, &resubmit, &resynced); })) {
    buffers_.markFaulted();
    v.vq.unmap();
    throw Napi::Error::New(env, describeGuestFault(buffers_.mem(), buffers_.fault()));
  }
  if (!ok) {
    v.vq.unmap();
    throw Napi::Error::New(env, err);
  }
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
  // -1 - n: n heads resubmitted from a region whose used_idx had to be
  // re-synchronised (JS warns); n >= 0: a clean recovery of n heads.
  return Napi::Number::New(env, resynced ? -1.0 - resubmit : resubmit);
}

void Session::requireStopped(Napi::Env env, const char* what) {
  for (auto& v : vrings_)
    if (v->started) throw Napi::Error::New(env, std::string(what) + " while a ring is running");
}

Napi::Value Session::SetInflight(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  UniqueFd fd(static_cast<int>(argInt(info, 0)));
  if (destroyed_) throw Napi::Error::New(env, "session is destroyed");
  uint64_t size = argU64(info, 1), offset = argU64(info, 2);
  int64_t numQueues = argInt(info, 3), queueSize = argInt(info, 4);
  requireStopped(env, "SET_INFLIGHT_FD");
  if (numQueues < 0 || numQueues > 0xffff || queueSize < 0 || queueSize > 0xffff)
    throw Napi::Error::New(env, "SET_INFLIGHT_FD num_queues or queue_size does not fit 16 bits");
  std::string err;
  for (auto& v : vrings_) v->vq.setInflight(nullptr);
  if (!inflight_.map(fd.release(), size, offset, static_cast<unsigned>(numQueues),
                     static_cast<unsigned>(queueSize), static_cast<unsigned>(vrings_.size()),
                     maxQueueSize_, err)) {
    inflight_.unmap();  // a frontend that sent a bad region has none
    throw Napi::Error::New(env, err);
  }
  for (size_t i = 0; i < vrings_.size(); i++) vrings_[i]->vq.setInflight(inflight_.queue(static_cast<unsigned>(i)));
  return env.Undefined();
}

Napi::Value Session::ClearInflight(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (destroyed_) return env.Undefined();
  requireStopped(env, "clearInflight");
  for (auto& v : vrings_) v->vq.setInflight(nullptr);
  inflight_.unmap();
  return env.Undefined();
}

Napi::Value Session::PushUsed(const Napi::CallbackInfo& info) {
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
  if (notify) v.signalGuest();
  return env.Undefined();
}

Napi::Value Session::Destroy(const Napi::CallbackInfo& info) {
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
void Session::OnKick(uv_poll_t* h, int status, int events) {
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
  if (k == KickState::kKicked) v->kicks++;
  v->session->deliver(*v);
}

void Session::ringBroken(Vring& v, const std::string& err) {
  closePoll(v.kickPoll);
  v.started = false;
  if (destroyed_) return;
  Napi::Env env = Env();
  callJs(env, onViolation_, callbacks_.Value(), {Napi::Number::New(env, v.index), Napi::String::New(env, err)});
}

// Pops and hands chains to JS, batch by batch, until the ring is empty or
// JS pauses it. Re-entry (JS polling from inside onChains) is a no-op: the
// outer loop keeps popping.
void Session::deliver(Vring& v) {
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

void Session::deliverOne(Vring& v) {
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
void Session::guestFaulted(int q) {
  if (!buffers_.markFaulted()) return;
  Napi::Env env = Env();
  callJs(env, onViolation_, callbacks_.Value(),
         {Napi::Number::New(env, q), Napi::String::New(env, describeGuestFault(buffers_.mem(), buffers_.fault()))});
}

void Session::OnUringEvent(uv_poll_t* h, int, int) {
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
  c.Set("HEADER_BYTES", kHeaderBytes);
  c.Set("FIXED_CHUNK", static_cast<double>(kFixedChunk));
  c.Set("IOV_MAX", kIovMax);
  c.Set("MAX_QUEUES", kMaxQueues);
  exports.Set("constants", c);
}

}  // namespace vublk
