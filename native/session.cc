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
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <uv.h>

#include <memory>
#include <vector>

#include "buffer-table.h"
#include "errno-error.h"
#include "exports.h"
#include "guest-access.h"
#include "guest-memory.h"
#include "js-callback.h"
#include "notifier-fd.h"
#include "split-virtqueue.h"
#include "uring.h"

namespace vublk {

namespace {

constexpr unsigned kOpStride = 6;
constexpr unsigned kIovStride = 3;
constexpr unsigned kCqeStride = 2;
constexpr unsigned kUsedStride = 5;
constexpr unsigned kOpReadv = 0;
constexpr unsigned kOpWritev = 1;
constexpr unsigned kOpFsync = 2;
// fallocate: fileOffset = op[2], length = op[3], mode = op[4].
constexpr unsigned kOpFallocate = 3;
constexpr int kFallocPunch = 0x01 | 0x02;  // FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
constexpr int kFallocZero = 0x01 | 0x10;   // FALLOC_FL_KEEP_SIZE | FALLOC_FL_ZERO_RANGE
// BLKDISCARD on a block device: fileOffset = op[2], length = op[3]. io_uring
// has no discard op, so it runs on libuv's thread pool and its result comes
// back through the ring's completion path.
constexpr unsigned kOpBlkDiscard = 4;
constexpr unsigned kOpFlagFixed = 1;
constexpr unsigned kOpFlagDsync = 2;
constexpr unsigned kIovMax = 1024;
// Largest fixed buffer io_uring takes; larger regions are registered in chunks.
constexpr uint64_t kFixedChunk = 1ull << 30;
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
  explicit Session(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Session>(info) {
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
    diskFd_ = static_cast<int>(argInt(info, 2));
    int64_t entries = argInt(info, 3);
    uint64_t bounceBytes = argU64(info, 4);
    if (queues < 1 || queues > kMaxQueues) throw Napi::RangeError::New(env, "queues out of range");
    if (maxQueueSize < 1 || maxQueueSize > kMaxQueueSize)
      throw Napi::RangeError::New(env, "maxQueueSize out of range");
    if (entries < 1 || entries > 32768) throw Napi::RangeError::New(env, "uringEntries out of range");
    // Every op's file range is checked against the disk's size in Submit.
    diskBytes_ = argU64(info, 7);
    blockDevice_ = info[8].ToBoolean();
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
    iovScratch_.resize(sqIovs_.length / kIovStride);

    Napi::Object cbs = info[6].As<Napi::Object>();
    callbacks_ = Napi::Persistent(cbs);
    onChains_ = Napi::Persistent(cbs.Get("onChains").As<Napi::Function>());
    onCompletions_ = Napi::Persistent(cbs.Get("onCompletions").As<Napi::Function>());
    onViolation_ = Napi::Persistent(cbs.Get("onViolation").As<Napi::Function>());

    buffers_.init(env, bounceBytes);

    int rc = uring_.init(static_cast<unsigned>(entries));
    if (rc < 0) throwErrno(env, -rc, "io_uring_queue_init");
    napi_get_uv_event_loop(env, &loop_);
    uringPoll_ = new uv_poll_t;
    rc = uv_poll_init(loop_, uringPoll_, uring_.eventFd());
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
    uring_.close();
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
    uring_.unregisterBuffers();
    fixedBase_.clear();
    bool ok = !destroyed_ && buffers_.mem().remove(argU64(info, 0), argU64(info, 1));
    return Napi::Boolean::New(info.Env(), ok);
  }

  Napi::Value ClearRegions(const Napi::CallbackInfo& info) {
    uring_.unregisterBuffers();
    fixedBase_.clear();
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
    // No more disk I/O for a frontend whose memory faulted: none is taken,
    // so JS fails every op (EIO) and the connection drains at once.
    if (buffers_.faulted()) return Napi::Number::New(env, 0);
    const double* ops = static_cast<const double*>(sqOps_.data);
    const double* iovs = static_cast<const double*>(sqIovs_.data);
    size_t maxIovs = iovScratch_.size();
    // Check every op before queuing any, so a bad one leaves nothing half-done.
    for (int64_t k = 0; k < n; k++) {
      const double* op = ops + k * kOpStride;
      if (!(op[0] == kOpReadv || op[0] == kOpWritev || op[0] == kOpFsync || op[0] == kOpFallocate ||
            op[0] == kOpBlkDiscard))
        throw Napi::RangeError::New(env, "submit: unknown opcode");
      if (!(op[1] >= 0 && op[1] <= 9007199254740992.0 && op[5] >= 0 && op[5] <= 255))
        throw Napi::RangeError::New(env, "submit: bad userData or flags");
      if (op[0] == kOpFsync) continue;
      if (op[0] == kOpFallocate || op[0] == kOpBlkDiscard) {
        if (!(op[2] >= 0 && op[2] <= 9007199254740992.0 && op[3] > 0 && op[3] <= 9007199254740992.0 &&
              (op[0] == kOpBlkDiscard || op[4] == kFallocPunch || op[4] == kFallocZero)))
          throw Napi::RangeError::New(env, "submit: bad fallocate/discard range or mode");
        if (op[0] == kOpBlkDiscard && !blockDevice_)
          throw Napi::RangeError::New(env, "submit: BLKDISCARD on a disk that is not a block device");
        if (!insideDisk(op[2], op[3]))
          throw Napi::RangeError::New(env, "submit: fallocate/discard range outside the disk");
        continue;
      }
      double start = op[3], count = op[4];
      if (!(start >= 0 && count >= 1 && count <= kIovMax && start + count <= maxIovs))
        throw Napi::RangeError::New(env, "submit: iovec range out of bounds");
      if (!(op[2] >= 0 && op[2] <= 9007199254740992.0))
        throw Napi::RangeError::New(env, "submit: file offset out of range");
      if ((static_cast<unsigned>(op[5]) & kOpFlagFixed) &&
          (count != 1 || fixedIndex(iovs[static_cast<size_t>(start) * kIovStride],
                                    iovs[static_cast<size_t>(start) * kIovStride + 1],
                                    iovs[static_cast<size_t>(start) * kIovStride + 2]) < 0))
        throw Napi::RangeError::New(env, "submit: FIXED op is not one iovec in one registered buffer");
      double bytes = 0;  // <= 1024 iovecs of < 2^53 each: exact enough to compare below
      for (size_t m = static_cast<size_t>(start); m < static_cast<size_t>(start + count); m++) {
        const double* iv = iovs + m * kIovStride;
        uint8_t* p = buffers_.ptr(iv[0], iv[1], iv[2]);
        if (!p) throw Napi::RangeError::New(env, "submit: iovec outside guest memory and bounce arena");
        if (op[0] == kOpReadv && iv[0] == kZeroBufId)
          throw Napi::RangeError::New(env, "submit: cannot read into the zero buffer");
        iovScratch_[m] = iovec{p, static_cast<size_t>(iv[2])};
        bytes += iv[2];
      }
      if (!insideDisk(op[2], bytes))
        throw Napi::RangeError::New(env, "submit: read/write range outside the disk");
    }
    int64_t queued = 0;
    int rc = 0;
    for (; queued < n; queued++) {
      const double* op = ops + queued * kOpStride;
      unsigned opcode = static_cast<unsigned>(op[0]);
      uint64_t userData = static_cast<uint64_t>(op[1]);
      uint64_t off = static_cast<uint64_t>(op[2]);
      const iovec* iov =
          opcode == kOpFallocate || opcode == kOpBlkDiscard ? nullptr : iovScratch_.data() + static_cast<size_t>(op[3]);
      unsigned cnt = static_cast<unsigned>(op[4]);
      unsigned flags = static_cast<unsigned>(op[5]);
      bool dsync = flags & kOpFlagDsync;
      bool ok;
      if (opcode == kOpFsync) {
        ok = uring_.prepFsync(diskFd_, userData);
      } else if (opcode == kOpBlkDiscard) {
        // Hand the SQ to the kernel first, so that the ops taken are always
        // the first `queued - dropped` of the batch.
        rc = uring_.submit();
        if (rc < 0) break;
        ok = queueBlkDiscard(off, static_cast<uint64_t>(op[3]), userData);
      } else if (opcode == kOpFallocate) {
        ok = uring_.prepFallocate(diskFd_, static_cast<int>(op[4]), off, static_cast<uint64_t>(op[3]),
                                  userData);
      } else if (flags & kOpFlagFixed) {
        const double* iv = iovs + static_cast<size_t>(op[3]) * kIovStride;
        ok = uring_.prepFixed(opcode == kOpWritev, diskFd_, iov->iov_base,
                              static_cast<unsigned>(iov->iov_len), off,
                              static_cast<unsigned>(fixedIndex(iv[0], iv[1], iv[2])), userData, dsync);
      } else if (opcode == kOpReadv) {
        ok = uring_.prepReadv(diskFd_, iov, cnt, off, userData);
      } else {
        ok = uring_.prepWritev(diskFd_, iov, cnt, off, userData, dsync);
      }
      if (!ok) break;
    }
    if (rc == 0) rc = uring_.submit();
    int64_t taken = queued - static_cast<int64_t>(uring_.dropped());
    if (rc < 0) {
      // The ops after the first `taken` never reach the kernel (Uring made
      // their SQEs no-ops); JS fails exactly those.
      Napi::Error e = errnoError(env, -rc, "io_uring_submit");
      e.Set("taken", Napi::Number::New(env, static_cast<double>(taken)));
      throw e;
    }
    return Napi::Number::New(env, static_cast<double>(queued));
  }

  // Is [offset, offset + len) inside the disk? (doubles < 2^53, checked by the caller)
  bool insideDisk(double offset, double len) const {
    return offset <= static_cast<double>(diskBytes_) && len <= static_cast<double>(diskBytes_) - offset;
  }

  // {ioUring, threadPool}: native work of this session still outstanding
  // (ops the kernel holds, BLKDISCARDs on libuv's thread pool). A closing
  // connection waits for both to reach 0 before destroy().
  Napi::Value Outstanding(const Napi::CallbackInfo& info) {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("ioUring", static_cast<double>(destroyed_ ? 0 : uring_.inflight()));
    o.Set("threadPool", static_cast<double>(pendingDiscards_));
    return o;
  }

  // Asks the kernel to cancel every op in flight; their completions (or
  // -ECANCELED) arrive through onCompletions as usual.
  Napi::Value CancelIo(const Napi::CallbackInfo& info) {
    if (destroyed_) return info.Env().Undefined();
    int rc = uring_.cancelAll();
    if (rc < 0) throwErrno(info.Env(), -rc, "io_uring_submit");
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

  // Registers every guest region with io_uring as fixed buffers, in chunks of
  // at most kFixedChunk (the kernel's limit per buffer is 1 GiB). Returns the
  // number of fixed buffers; throws {code, errno} if the kernel refuses
  // (e.g. RLIMIT_MEMLOCK), leaving none registered. The caller has drained
  // I/O on the previous table.
  Napi::Value RegisterBuffers(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (destroyed_) throw Napi::Error::New(env, "session is destroyed");
    std::vector<iovec> iov;
    fixedBase_.assign(GuestMemory::kMaxRegions, -1);
    for (uint32_t id = 0; id < GuestMemory::kMaxRegions; id++) {
      const Region* r = buffers_.mem().region(id);
      if (!r) continue;
      fixedBase_[id] = static_cast<int>(iov.size());
      for (uint64_t off = 0; off < r->size; off += kFixedChunk) {
        uint64_t len = r->size - off < kFixedChunk ? r->size - off : kFixedChunk;
        iov.push_back(iovec{r->host + off, static_cast<size_t>(len)});
      }
    }
    int rc = uring_.registerBuffers(iov.data(), static_cast<unsigned>(iov.size()));
    if (rc < 0) {
      fixedBase_.clear();
      throwErrno(env, -rc, "io_uring_register_buffers");
    }
    return Napi::Number::New(env, static_cast<double>(iov.size()));
  }

  Napi::Value UnregisterBuffers(const Napi::CallbackInfo& info) {
    uring_.unregisterBuffers();
    fixedBase_.clear();
    return info.Env().Undefined();
  }

  // Fixed buffer index for (bufId, offset, len), or -1 if it is not inside
  // one registered chunk.
  int fixedIndex(double bufId, double offset, double len) const {
    if (fixedBase_.empty() || !(bufId >= 0 && bufId < GuestMemory::kMaxRegions)) return -1;
    int base = fixedBase_[static_cast<size_t>(bufId)];
    if (base < 0 || !(offset >= 0 && len > 0)) return -1;
    uint64_t off = static_cast<uint64_t>(offset), n = static_cast<uint64_t>(len);
    if (off / kFixedChunk != (off + n - 1) / kFixedChunk) return -1;
    return base + static_cast<int>(off / kFixedChunk);
  }

  struct DiscardWork {
    uv_work_t work;
    Session* session;
    int fd;
    uint64_t range[2];
    uint64_t userData;
    int res;
  };

  // Runs BLKDISCARD on the thread pool. The JS object is kept alive (Ref)
  // until the result is back on the loop thread.
  bool queueBlkDiscard(uint64_t off, uint64_t len, uint64_t userData) {
    auto* w = new DiscardWork{};
    w->work.data = w;
    w->session = this;
    w->fd = diskFd_;
    w->range[0] = off;
    w->range[1] = len;
    w->userData = userData;
    int rc = uv_queue_work(
        loop_, &w->work,
        [](uv_work_t* req) {
          auto* d = static_cast<DiscardWork*>(req->data);
          d->res = ioctl(d->fd, BLKDISCARD, d->range) == 0 ? 0 : -errno;
        },
        [](uv_work_t* req, int status) {
          auto* d = static_cast<DiscardWork*>(req->data);
          Session* s = d->session;
          s->pendingDiscards_--;
          if (!s->destroyed_) s->uring_.postCompletion(d->userData, status == 0 ? d->res : -ECANCELED);
          s->Unref();
          delete d;
        });
    if (rc != 0) {
      delete w;
      return false;
    }
    pendingDiscards_++;
    Ref();
    return true;
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
    s->uring_.ackEvent();
    unsigned max = static_cast<unsigned>(s->cqes_.length / kCqeStride);
    while (!s->destroyed_) {
      unsigned n = s->uring_.reap(static_cast<double*>(s->cqes_.data), max);
      if (n == 0) break;
      callJs(env, s->onCompletions_, s->callbacks_.Value(), {Napi::Number::New(env, n)});
    }
  }

  BufferTable buffers_;  // guest memory, bounce arena, zero buffer; see guestFaulted()
  std::vector<std::unique_ptr<Vring>> vrings_;
  Uring uring_;
  uv_loop_t* loop_ = nullptr;
  uv_poll_t* uringPoll_ = nullptr;
  int diskFd_ = -1;
  uint64_t diskBytes_ = 0;
  bool blockDevice_ = false;
  unsigned pendingDiscards_ = 0;
  unsigned maxQueueSize_ = 0;
  bool destroyed_ = false;
  bool delivering_ = false;
  PopBatch batch_{};
  SharedArray chains_, headers_, segs_, sqOps_, sqIovs_, cqes_, used_, copies_;
  std::vector<int> fixedBase_;  // first fixed buffer index per bufId, -1 if none
  std::vector<iovec> iovScratch_;
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
