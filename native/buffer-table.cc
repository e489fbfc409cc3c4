// BufferTable: bufId lookup and guest copies (see buffer-table.h).
#include "buffer-table.h"

#include <sys/mman.h>

#include <cstring>

#include "errno-error.h"

namespace vublk {

void BufferTable::init(Napi::Env env, uint64_t bounceBytes) {
  // Bounce arena: page aligned (so any O_DIRECT memory alignment holds),
  // reserved lazily: only pages that bounce I/O touches cost memory.
  void* arena = mmap(nullptr, bounceBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (arena == MAP_FAILED) throwErrno(env, errno, "mmap");
  bounce_ = static_cast<uint8_t*>(arena);
  bounceLen_ = bounceBytes;
  // Never written: every page maps the kernel's zero page.
  void* z = mmap(nullptr, kZeroBytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (z == MAP_FAILED) throwErrno(env, errno, "mmap");
  zeroes_ = static_cast<uint8_t*>(z);
}

void BufferTable::release() {
  // A shared table is unmapped by its last holder; this one only lets go.
  if (shared_) {
    mem_ = std::make_shared<GuestMemory>();
    shared_ = false;
  } else {
    mem_->clear();
  }
  if (bounce_) munmap(bounce_, bounceLen_);
  bounce_ = nullptr;
  if (zeroes_) munmap(zeroes_, kZeroBytes);
  zeroes_ = nullptr;
}

uint8_t* BufferTable::ptr(double bufId, double offset, double len) const {
  // Range-check the doubles before any cast: an out-of-range cast is UB.
  constexpr double kLimit = 9007199254740992.0;  // 2^53
  if (!(bufId >= 0 && bufId <= kZeroBufId && offset >= 0 && offset <= kLimit && len >= 0 &&
        len <= kLimit))
    return nullptr;
  uint64_t off = static_cast<uint64_t>(offset), n = static_cast<uint64_t>(len);
  if (bufId == kZeroBufId) {
    if (!zeroes_ || off > kZeroBytes || n > kZeroBytes - off) return nullptr;
    return zeroes_ + off;
  }
  if (bufId == kBounceBufId) {
    if (!bounce_ || off > bounceLen_ || n > bounceLen_ - off) return nullptr;
    return bounce_ + off;
  }
  return mem_->bufPtr(static_cast<uint32_t>(bufId), off, n);
}

bool BufferTable::writeGuest(Napi::Env env, uint64_t bufId, uint64_t off, Napi::Uint8Array data) {
  // The full 53-bit value: a bufId of 2^32 must not alias region 0.
  uint8_t* dst = bufId < GuestMemory::kMaxRegions
                     ? mem_->bufPtr(static_cast<uint32_t>(bufId), off, data.ByteLength())
                     : nullptr;
  if (!dst) throw Napi::RangeError::New(env, "writeGuest: outside guest memory");
  const uint8_t* src = data.Data();
  size_t len = data.ByteLength();
  return faulted_ || guardedGuestAccess(*mem_, fault_, [&] { memcpy(dst, src, len); });
}

// Copies dst.length bytes of guest memory into dst; throws if out of bounds.
// (DISCARD/WRITE_ZEROES segment lists.)
bool BufferTable::readGuest(Napi::Env env, double bufId, Napi::Value offset, Napi::Uint8Array dst) {
  uint8_t* src = bufId < kBounceBufId ? ptr(bufId, offset.As<Napi::Number>().DoubleValue(),
                                            static_cast<double>(dst.ByteLength()))
                                      : nullptr;
  if (!src) throw Napi::RangeError::New(env, "readGuest: outside guest memory");
  uint8_t* out = dst.Data();
  size_t len = dst.ByteLength();
  if (faulted_ || !guardedGuestAccess(*mem_, fault_, [&] { memcpy(out, src, len); })) {
    memset(out, 0, len);  // no stale bytes: the request is failed with the connection
    return false;
  }
  return true;
}

// n copies [srcBufId, srcOffset, dstBufId, dstOffset, len] between guest
// memory and the bounce arena. All are checked before any is done.
bool BufferTable::copy(Napi::Env env, const double* c, int64_t n) {
  for (int64_t k = 0; k < n; k++) {
    const double* e = c + k * kCopyStride;
    if (!ptr(e[0], e[1], e[4]) || !ptr(e[2], e[3], e[4]) || e[2] == kZeroBufId)
      throw Napi::RangeError::New(env, "copy: range outside guest memory and bounce arena");
  }
  if (faulted_) return true;
  return guardedGuestAccess(*mem_, fault_, [&] {
    for (int64_t k = 0; k < n; k++) {
      const double* e = c + k * kCopyStride;
      memmove(ptr(e[2], e[3], e[4]), ptr(e[0], e[1], e[4]), static_cast<size_t>(e[4]));
    }
  });
}

}  // namespace vublk
