// BufferTable: what a bufId names (guest regions 0..508, the bounce arena,
// the zero buffer), the bounds-checked ptr() lookup for it, and the guest
// copies JS asks for (writeGuest, readGuest, copy), each under the SIGBUS
// guard. It owns the guest memory maps, the arena and the zero buffer.
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <utility>

#include "guest-access.h"
#include "guest-memory.h"
#include "shared-arrays.h"

namespace vublk {

constexpr uint64_t kMaxBounceBytes = 1ull << 32;

class BufferTable {
 public:
  BufferTable() : mem_(std::make_shared<GuestMemory>()) {}
  ~BufferTable() { release(); }
  // Uses a connection's shared memory table instead of a private one (a
  // data-plane worker's session); regions then change only through it.
  void shareMemory(std::shared_ptr<GuestMemory> mem) {
    mem_ = std::move(mem);
    shared_ = true;
  }
  bool sharedMemory() const { return shared_; }
  // Maps the bounce arena (bounceBytes, checked by the caller) and the zero
  // buffer; throws {code, errno} if mmap fails.
  void init(Napi::Env env, uint64_t bounceBytes);
  // Unmaps guest memory, the arena and the zero buffer (idempotent).
  void release();

  GuestMemory& mem() { return *mem_; }
  const GuestMemory& mem() const { return *mem_; }
  GuestFault& fault() { return fault_; }
  // A guarded access faulted: from then on the session touches no guest
  // memory and takes no disk I/O.
  bool faulted() const { return faulted_; }
  // Sets faulted(); true if it was not set before.
  bool markFaulted() {
    bool first = !faulted_;
    faulted_ = true;
    return first;
  }

  // The bounce arena (for fixed-buffer registration).
  uint8_t* bounce() const { return bounce_; }
  uint64_t bounceLen() const { return bounceLen_; }

  // Host pointer for (bufId, offset, len): a guest region or the bounce
  // arena, bounds-checked; nullptr if it lies outside.
  uint8_t* ptr(double bufId, double offset, double len) const;

  // Guest copies: each throws a RangeError for a range outside its buffers,
  // touches no guest memory once faulted(), and returns false if its access
  // faulted (readGuest: or faulted() was already set; it zeroes dst then).
  // The caller reports a false with the session's guestFaulted.
  bool writeGuest(Napi::Env env, uint64_t bufId, uint64_t off, Napi::Uint8Array data);
  // offset is read only for a bufId below the arena's.
  bool readGuest(Napi::Env env, double bufId, Napi::Value offset, Napi::Uint8Array dst);
  bool copy(Napi::Env env, const double* copies, int64_t n);

 private:
  std::shared_ptr<GuestMemory> mem_;  // never null
  bool shared_ = false;
  GuestFault fault_;
  bool faulted_ = false;
  uint8_t* bounce_ = nullptr;
  uint64_t bounceLen_ = 0;
  uint8_t* zeroes_ = nullptr;
};

}  // namespace vublk
