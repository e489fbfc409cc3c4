// Recovery points for the daemon's own touches of guest memory.
//
// Guest memory is a MAP_SHARED mapping of a file the frontend owns (a memfd,
// a /dev/shm or hugetlbfs file). The frontend can shrink that file at any
// time (ftruncate), or a hugetlbfs file can run out of huge pages; a load or
// store on a page past the new end then raises SIGBUS, which by default kills
// the whole daemon. Sealing (F_SEAL_SHRINK) would only cover memfds, so every
// batch-level access runs inside guardedGuestAccess(): a process-wide SIGBUS
// handler, installed once, sees that the faulting address lies in a region
// of the GuestMemory the current thread is touching and siglongjmps back to
// the recovery point, which reports the fault instead of dying. A SIGBUS
// anywhere else (not on this thread's recovery point, or not in its guest
// memory) goes to the handler that was installed before ours, or kills the
// process as the default action would.
//
// Contract for the guarded function, because a longjmp skips destructors and
// the C++ unwinder: while it touches guest memory no object with a
// non-trivial destructor may be alive in its frames (keep std::string etc. in
// the caller), it must not throw, and it must not call into JS. State it
// leaves half-updated (a ring pointer advanced mid-batch) is abandoned: the
// caller breaks the connection.
#pragma once

#include <setjmp.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "guest-memory.h"

namespace vublk {

// Where a guarded access faulted: the region slot and the offset in it.
struct GuestFault {
  uint32_t bufId = 0;
  uint64_t offset = 0;
};

// The rule the frontend broke, e.g. "guest memory region 1 shrank under its
// mapping: SIGBUS at offset 0x2000 of 4194304 bytes (gpa 0x400000)".
std::string describeGuestFault(const GuestMemory& mem, const GuestFault& fault);

// Installs the SIGBUS handler (once per process; later calls do nothing).
void installGuestFaultHandler();

namespace detail {

struct RecoveryPoint {
  sigjmp_buf jump;
  const GuestMemory* mem;
  GuestFault* fault;
  RecoveryPoint* prev;
};

// This thread's innermost recovery point, nullptr outside guarded accesses.
RecoveryPoint*& currentRecoveryPoint();

}  // namespace detail

// Runs fn() (see the contract above). Returns true if it finished, false if
// it touched a lost page of `mem`, with `fault` saying where.
template <typename Fn>
bool guardedGuestAccess(const GuestMemory& mem, GuestFault& fault, Fn&& fn) {
  detail::RecoveryPoint rp;
  rp.mem = &mem;
  rp.fault = &fault;
  rp.prev = detail::currentRecoveryPoint();
  // savemask 0: no sigprocmask syscall per batch. The handler runs with
  // SA_NODEFER, so SIGBUS is not left blocked when it jumps back here.
  if (sigsetjmp(rp.jump, 0) != 0) {
    detail::currentRecoveryPoint() = rp.prev;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return false;
  }
  detail::currentRecoveryPoint() = &rp;
  // The handler reads the pointer on this thread: publish it before fn's
  // first guest access, and keep fn's accesses before the reset below.
  std::atomic_signal_fence(std::memory_order_seq_cst);
  fn();
  std::atomic_signal_fence(std::memory_order_seq_cst);
  detail::currentRecoveryPoint() = rp.prev;
  return true;
}

}  // namespace vublk
