// Session's rings: their addresses and notifier fds, start and stop,
// pushUsed, and the kick/uring event handlers that deliver batches to JS.
#include <utility>

#include "guest-access.h"
#include "js-callback.h"
#include "session.h"

namespace vublk {

Napi::Value Session::SetVringAddr(const Napi::CallbackInfo& info) {
  Vring& v = vring(info);
  v.vq.setAddr(argU64(info, 1), argU64(info, 2), argU64(info, 3));
  return info.Env().Undefined();
}

Napi::Value Session::SetVringBase(const Napi::CallbackInfo& info) {
  Vring& v = vring(info);
  v.vq.setBase(static_cast<uint16_t>(argInt(info, 1)));
  return info.Env().Undefined();
}

// A call fd that arrives on a running ring is signalled once (as
// libvhost-user does): a driver waiting for an interrupt across a
// reconnect would otherwise wait for a completion that came before.
Napi::Value Session::SetVringCall(const Napi::CallbackInfo& info) {
  setFd(info, &Vring::callFd);
  Vring& v = vring(info);
  if (v.started && v.callFd.valid()) signalCall(v.callFd.get());  // not a completion: not counted
  return info.Env().Undefined();
}

Napi::Value Session::SetVringErr(const Napi::CallbackInfo& info) {
  setFd(info, &Vring::errFd);
  return info.Env().Undefined();
}

Napi::Value Session::SetVringEnabled(const Napi::CallbackInfo& info) {
  Vring& v = vring(info);
  v.enabled = info[1].ToBoolean();
  return info.Env().Undefined();
}

Napi::Value Session::SetEventIdx(const Napi::CallbackInfo& info) {
  for (auto& v : vrings_) v->vq.setEventIdx(info[0].ToBoolean());
  return info.Env().Undefined();
}

Napi::Value Session::SetIndirect(const Napi::CallbackInfo& info) {
  for (auto& v : vrings_) v->vq.setIndirect(info[0].ToBoolean());
  return info.Env().Undefined();
}

Napi::Value Session::PauseVring(const Napi::CallbackInfo& info) {
  Vring& v = vring(info);
  v.paused = info[1].ToBoolean();
  return info.Env().Undefined();
}

Napi::Value Session::PollVring(const Napi::CallbackInfo& info) {
  Vring& v = vring(info);
  deliver(v);
  return info.Env().Undefined();
}

Napi::Value Session::VringStarted(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), vring(info).started);
}

// ringCounters(out): [kicks, calls] per queue into out (a Float64Array of
// at least 2 x queues). Still answers after destroy(): the rings stay.
Napi::Value Session::RingCounters(const Napi::CallbackInfo& info) {
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      info[0].As<Napi::TypedArray>().ElementLength() < 2 * vrings_.size())
    throw Napi::TypeError::New(info.Env(), "ringCounters expects a Float64Array of 2 x queues");
  Napi::Float64Array out = info[0].As<Napi::Float64Array>();
  for (size_t i = 0; i < vrings_.size(); i++) {
    out[2 * i] = vrings_[i] ? vrings_[i]->kicks : 0;
    out[2 * i + 1] = vrings_[i] ? vrings_[i]->calls : 0;
  }
  return info.Env().Undefined();
}

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
  // Stopped from a callback while poll() held kicks off: turn them back on
  // for whoever serves the ring next.
  if (v.vq.notifySuppressed() && !buffers_.faulted() &&
      !guardedGuestAccess(buffers_.mem(), buffers_.fault(), [&] { v.vq.setNotifySuppressed(false); }))
    buffers_.markFaulted();
  v.kickPoll.close();
  v.kickFd.reset();
  v.callFd.reset();
  v.started = false;
  v.vq.unmap();
  return Napi::Number::New(info.Env(), v.vq.lastAvail());
}

// Takes fd (owned from here on, closed on every throw) as a notifier of
// the ring, non-blocking so the loop thread can never block on it.
void Session::setFd(const Napi::CallbackInfo& info, UniqueFd Vring::*field) {
  UniqueFd fd(static_cast<int>(argInt(info, 1)));
  Vring& v = vring(info);
  int rc = fd.valid() ? setNonBlocking(fd.get()) : 0;
  if (rc < 0) throwErrno(info.Env(), -rc, "fcntl");
  if (field == &Vring::kickFd) v.kickPoll.close();
  v.*field = std::move(fd);  // closes the fd it replaces
}

Napi::Value Session::SetVringKick(const Napi::CallbackInfo& info) {
  setFd(info, &Vring::kickFd);
  vring(info).started = false;
  return info.Env().Undefined();
}

Napi::Value Session::StartVring(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vring& v = vring(info);
  if (!v.kickFd.valid()) throw Napi::Error::New(env, "ring has no kick fd");
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
  if (!v.kickPoll.isOpen()) {
    int rc = v.kickPoll.open(loop_, v.kickFd.get(), &v);
    if (rc != 0) throwErrno(env, -rc, "uv_poll_init");
    v.kickPoll.start(UV_READABLE | UV_DISCONNECT, OnKick);
  }
  v.started = true;
  // -1 - n: n heads resubmitted from a region whose used_idx had to be
  // re-synchronised (JS warns); n >= 0: a clean recovery of n heads.
  return Napi::Number::New(env, resynced ? -1.0 - resubmit : resubmit);
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

// --- event handlers ---
void Session::OnKick(uv_poll_t* h, int status, int events) {
  auto* v = static_cast<Vring*>(h->data);
  if (!v) return;
  std::string err;
  KickState k = status < 0 || (events & UV_DISCONNECT) ? KickState::kBroken : drainKick(v->kickFd.get(), err);
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
  v.kickPoll.close();
  v.started = false;
  if (destroyed_) return;
  Napi::Env env = Env();
  callJs(env, onViolation_, callbacks_.Value(), {Napi::Number::New(env, v.index), Napi::String::New(env, err)});
}

// Pops and hands chains to JS, batch by batch, until the ring is empty or
// JS pauses it. Re-entry (JS polling from inside onChains) is a no-op: the
// outer loop keeps popping. Returns the chains delivered.
unsigned Session::deliver(Vring& v) {
  if (delivering_) {
    // JS asked from inside a delivery: the shared batch arrays are in use.
    // Note it; the outer delivery pops this ring when it is done.
    v.pollPending = true;
    return 0;
  }
  delivering_ = true;
  unsigned n = deliverOne(v);
  n += deliverPending();
  delivering_ = false;
  return n;
}

// The rings JS asked for during a delivery (see deliver()).
unsigned Session::deliverPending() {
  unsigned n = 0;
  for (bool again = true; again;) {
    again = false;
    for (auto& other : vrings_) {
      if (other->pollPending && !destroyed_) {
        other->pollPending = false;
        n += deliverOne(*other);
        again = true;
      }
    }
  }
  return n;
}

unsigned Session::deliverOne(Vring& v) {
  Napi::Env env = Env();
  unsigned delivered = 0;
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
      delivered += batch_.nChains;
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
  return delivered;
}

void Session::OnUringEvent(uv_poll_t* h, int, int) {
  auto* s = static_cast<Session*>(h->data);
  if (!s) return;
  Napi::HandleScope scope(s->Env());
  s->disk_.ackEvents();
  s->reapCompletions();
}

// Hands every completion waiting to JS, batch by batch; returns how many.
unsigned Session::reapCompletions() {
  Napi::Env env = Env();
  unsigned max = static_cast<unsigned>(cqes_.length / kCqeStride);
  unsigned total = 0;
  while (!destroyed_) {
    unsigned n = disk_.reap(static_cast<double*>(cqes_.data), max);
    if (n == 0) break;
    total += n;
    callJs(env, onCompletions_, callbacks_.Value(), {Napi::Number::New(env, n)});
  }
  return total;
}

}  // namespace vublk
