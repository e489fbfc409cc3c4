// Session::poll: a bounded busy poll of the rings and the io_uring
// completion queue, for a data-plane thread that expects more work soon.
//
// While it polls, the guest is asked not to kick (the rings' notifications
// are suppressed), so a busy ring costs no eventfd write in the guest's
// frontend and no wake-up here. Before it returns it turns kicks back on,
// issues a full barrier and looks at every ring once more: a driver that
// published a request while it still saw kicks suppressed did not kick, and
// only this re-check finds that request. io_uring completions keep
// signalling their eventfd throughout (a completion-queue flag has no such
// barrier with the kernel's check); a pass that reaped them leaves one
// spurious wake-up that finds nothing.
#include <time.h>

#include <algorithm>
#include <atomic>

#include "crash-point.h"
#include "errno-error.h"
#include "guest-access.h"
#include "session.h"

namespace vublk {

namespace {

// The most one call may busy-poll while it keeps finding work, so the
// thread's event loop (control messages, timers) gets its turn.
constexpr uint64_t kPollCapNs = 1000000;
constexpr double kMaxPollNs = 1e9;

uint64_t monoNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

inline void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

// poll(maxNs): pops and reaps without waiting for an eventfd until maxNs
// pass with nothing found (the window restarts at each find), or at most
// max(maxNs, min(8 x maxNs, 1 ms)) in all. poll(0) checks once. Returns the
// chains and completions delivered.
Napi::Value Session::Poll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double maxNs = info[0].ToNumber().DoubleValue();
  if (!(maxNs >= 0 && maxNs <= kMaxPollNs))
    throw Napi::RangeError::New(env, "poll: maxNs out of range (0..1e9)");
  // From inside a delivery the batch arrays are in use: nothing to do.
  if (destroyed_ || delivering_ || buffers_.faulted()) return Napi::Number::New(env, 0);
  Napi::HandleScope scope(env);
  const uint64_t window = static_cast<uint64_t>(maxNs);
  const uint64_t cap = std::max(window, std::min(8 * window, kPollCapNs));
  const uint64_t start = monoNs();
  uint64_t lastFound = start;
  double delivered = 0;
  if (window > 0) suppressNotify(true);
  for (;;) {
    unsigned n = pollOnce();
    uint64_t now = monoNs();
    if (n > 0) {
      delivered += n;
      lastFound = now;
    }
    if (destroyed_ || buffers_.faulted()) break;
    if (now - lastFound >= window || now - start >= cap) break;
    cpuRelax();
  }
  if (destroyed_) return Napi::Number::New(env, delivered);
  pollRearmPoint();
  suppressNotify(false);
  delivered += pollOnce();  // the re-check: see the top of this file
  return Napi::Number::New(env, delivered);
}

// One look at every ring and at the completion queue; delivers what it
// finds through the same paths as the eventfd handlers.
unsigned Session::pollOnce() {
  unsigned n = 0;
  delivering_ = true;
  for (auto& v : vrings_)
    if (!destroyed_) n += deliverOne(*v);
  n += deliverPending();
  delivering_ = false;
  if (!destroyed_ && disk_.ready()) n += reapCompletions();
  return n;
}

// Suppresses kicks on every running ring, or turns them back on for all
// and orders that before the caller's re-check.
void Session::suppressNotify(bool on) {
  if (!buffers_.faulted() && !guardedGuestAccess(buffers_.mem(), buffers_.fault(), [&] {
        for (auto& v : vrings_)
          v->vq.setNotifySuppressed(on && v->started && v->enabled && !v->paused);
      })) {
    guestFaulted(-1);
  }
  if (!on) std::atomic_thread_fence(std::memory_order_seq_cst);
}

}  // namespace vublk
