// Session's N-API glue (the class, the exported constants), its set-up and
// teardown, guest memory regions and the inflight region (see session.h).
#include <utility>

#include "exports.h"
#include "guest-access.h"
#include "js-callback.h"
#include "rbd-image.h"
#include "session.h"
#include "shared-guest-memory.h"

namespace vublk {

Napi::Function Session::Define(Napi::Env env) {
  return DefineClass(
      env, "Session",
      {InstanceMethod<&Session::AddRegion>("addRegion"),
       InstanceMethod<&Session::RemoveRegion>("removeRegion"),
       InstanceMethod<&Session::ClearRegions>("clearRegions"),
       InstanceMethod<&Session::RegionBytes>("regionBytes"),
       InstanceMethod<&Session::Regions>("regions"),
       InstanceMethod<&Session::Poll>("poll"),
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

  // A data-plane worker's session: the connection's shared memory table.
  if (info.Length() > 9 && !info[9].IsUndefined()) {
    std::shared_ptr<GuestMemory> mem = findSharedGuestMemory(info[9].ToNumber().DoubleValue());
    if (!mem) throw Napi::Error::New(env, "memoryToken names no GuestMemory");
    buffers_.shareMemory(std::move(mem));
  }
  buffers_.init(env, bounceBytes);

  // A session on an RBD image: its ops go to librbd, not to diskFd.
  std::shared_ptr<RbdHandle> rbd;
  if (info.Length() > 10 && !info[10].IsUndefined()) {
    rbd = findSharedRbdImage(info[10].ToNumber().DoubleValue());
    if (!rbd) throw Napi::Error::New(env, "rbdToken names no RbdImage");
  }

  napi_get_uv_event_loop(env, &loop_);
  disk_.init(env, loop_, diskFd, diskBytes, blockDevice, static_cast<unsigned>(entries),
             sqIovs_.length / kIovStride, std::move(rbd));
  int rc = uringPoll_.open(loop_, disk_.uring().eventFd(), this);
  if (rc != 0) throwErrno(env, -rc, "uv_poll_init");
  uringPoll_.start(UV_READABLE, OnUringEvent);
  if (disk_.rbdEventFd() >= 0) {
    rc = rbdPoll_.open(loop_, disk_.rbdEventFd(), this);
    if (rc != 0) throwErrno(env, -rc, "uv_poll_init");
    rbdPoll_.start(UV_READABLE, OnUringEvent);
  }

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
    v->kickPoll.close();
    v->kickFd.reset();
    v->callFd.reset();
    v->errFd.reset();
    v->started = false;
  }
  for (auto& v : vrings_)
    if (v) v->vq.setInflight(nullptr);
  inflight_.unmap();
  uringPoll_.close();
  rbdPoll_.close();
  // JS destroys only once outstanding() is 0 (src/vhost-user/drain.ts),
  // except when the daemon exits. Then exiting the ring cancels what it
  // can and the kernel finishes the rest in the background; pages under
  // O_DIRECT I/O stay pinned by the kernel, so unmapping below is safe.
  // librbd's ops are waited for (RbdQueue::close): they touch the memory.
  disk_.close();
  buffers_.release();
}

// --- memory ---
Napi::Value Session::AddRegion(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  // Owned at once: any argument below that throws still closes it.
  UniqueFd fd(static_cast<int>(argInt(info, 0)));
  if (destroyed_) throw Napi::Error::New(env, "session is destroyed");
  requirePrivateMemory(env);
  return addGuestRegion(info, std::move(fd), buffers_.mem());
}

Napi::Value Session::RemoveRegion(const Napi::CallbackInfo& info) {
  requirePrivateMemory(info.Env());
  // Fixed buffers point into the mapping being removed: drop them first.
  disk_.unregisterBuffers();
  bool ok = !destroyed_ && buffers_.mem().remove(argU64(info, 0), argU64(info, 1));
  return Napi::Boolean::New(info.Env(), ok);
}

Napi::Value Session::ClearRegions(const Napi::CallbackInfo& info) {
  requirePrivateMemory(info.Env());
  disk_.unregisterBuffers();
  for (auto& v : vrings_) v->vq.unmap();
  buffers_.mem().clear();
  return info.Env().Undefined();
}

void Session::requirePrivateMemory(Napi::Env env) {
  if (buffers_.sharedMemory())
    throw Napi::Error::New(env, "guest memory is shared: change it through its GuestMemory");
}

Napi::Value Session::Regions(const Napi::CallbackInfo& info) {
  return describeRegions(info.Env(), buffers_.mem());
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


// A guarded access faulted (the frontend shrank a region's file): reports
// it once to JS, which breaks the connection (q < 0: no queue). From then
// on the session touches no guest memory and takes no disk I/O.
void Session::guestFaulted(int q) {
  if (!buffers_.markFaulted()) return;
  Napi::Env env = Env();
  callJs(env, onViolation_, callbacks_.Value(),
         {Napi::Number::New(env, q), Napi::String::New(env, describeGuestFault(buffers_.mem(), buffers_.fault()))});
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
