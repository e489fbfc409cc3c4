// The SIGBUS guard around the daemon's touches of guest memory: the handler
// that jumps back to the current recovery point, and the fault's description.
#include "guest-access.h"

#include <signal.h>

#include <cinttypes>
#include <cstdio>
#include <mutex>

namespace vublk {

namespace {

struct sigaction g_previous;

// Hands a SIGBUS that is not ours to whoever would have had it without us.
void chain(int sig, siginfo_t* info, void* ctx) {
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction) {
      g_previous.sa_sigaction(sig, info, ctx);
      return;
    }
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
    return;
  }
  // Default action (a synchronous SIGBUS cannot be ignored): die of it, with
  // the usual core dump, as if we had never installed a handler.
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGBUS, &dfl, nullptr);
  raise(SIGBUS);
}

void onSigbus(int sig, siginfo_t* info, void* ctx) {
  detail::RecoveryPoint* rp = detail::currentRecoveryPoint();
  uint32_t bufId;
  uint64_t offset;
  // Reading the region table is safe here: it belongs to this thread's
  // current access, which is the code that was interrupted.
  if (rp && info && rp->mem->locateHost(info->si_addr, &bufId, &offset)) {
    rp->fault->bufId = bufId;
    rp->fault->offset = offset;
    siglongjmp(rp->jump, 1);
  }
  chain(sig, info, ctx);
}

}  // namespace

namespace detail {

namespace {
// initial-exec: a fixed offset from the thread pointer, so reading it in the
// signal handler never calls __tls_get_addr (which may malloc on a thread
// that has not touched this module's TLS yet, e.g. a SIGBUS on a pool thread).
__attribute__((tls_model("initial-exec"))) thread_local RecoveryPoint* tlsCurrent = nullptr;
}  // namespace

RecoveryPoint*& currentRecoveryPoint() { return tlsCurrent; }

}  // namespace detail

void installGuestFaultHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    detail::currentRecoveryPoint() = nullptr;
    struct sigaction sa = {};
    sa.sa_sigaction = onSigbus;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigaction(SIGBUS, &sa, &g_previous);
  });
}

std::string describeGuestFault(const GuestMemory& mem, const GuestFault& fault) {
  const Region* r = mem.region(fault.bufId);
  char buf[200];
  snprintf(buf, sizeof buf,
           "guest memory region %" PRIu32
           " shrank under its mapping: SIGBUS at offset 0x%" PRIx64 " of %" PRIu64
           " bytes (gpa 0x%" PRIx64 ")",
           fault.bufId, fault.offset, r ? r->size : 0, r ? r->gpa + fault.offset : 0);
  return buf;
}

}  // namespace vublk
