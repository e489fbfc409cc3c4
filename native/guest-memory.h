// Guest memory table of one frontend connection: the regions QEMU shared with
// SET_MEM_TABLE / ADD_MEM_REG, mapped into this process.
//
// A region's slot number is its "bufId": JS names memory as (bufId, offset)
// and never sees a pointer. Every translation is bounds-checked here.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace vublk {

struct Region {
  uint64_t gpa = 0;   // guest-physical start
  uint64_t size = 0;  // bytes
  uint64_t uva = 0;   // frontend's user address (ring addresses use it)
  uint64_t mmapOffset = 0;  // where gpa lies in the frontend's fd
  uint8_t* host = nullptr;  // our mapping of gpa
  void* mapBase = nullptr;  // what mmap returned (host - mmapOffset)
  size_t mapLen = 0;
  bool active = false;
};

// One piece of a translated guest range: lies wholly inside one region.
struct GuestSpan {
  uint32_t bufId;
  uint64_t offset;  // within the region
  uint64_t len;
};

// One table may be shared by the sessions of several data-plane threads
// (see shared-guest-memory.h): lookups then run on all of them at once, but
// regions change only while every one of those sessions is quiesced, so the
// hot path takes no lock.
class GuestMemory {
 public:
  // VHOST_USER_MAX_RAM_SLOTS, the most CONFIGURE_MEM_SLOTS lets a frontend add.
  static constexpr unsigned kMaxRegions = 509;

  GuestMemory() = default;
  ~GuestMemory() { clear(); }
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  // Maps the region and returns its bufId. The fd is always closed, mapped or
  // not. On a bad region returns -1 and sets err to the rule it broke.
  int add(int fd, uint64_t gpa, uint64_t size, uint64_t uva, uint64_t mmapOffset,
          std::string& err);
  bool remove(uint64_t gpa, uint64_t size);
  void clear();
  unsigned count() const { return count_; }
  // Bytes mapped over all regions (what fixed-buffer registration would pin).
  uint64_t totalBytes() const {
    uint64_t n = 0;
    for (const Region& r : regions_)
      if (r.active) n += r.size;
    return n;
  }

  // The span of [gpa, gpa+len) that starts at gpa and stays in one region.
  // Returns false if gpa is not in guest memory.
  bool translateGpa(uint64_t gpa, uint64_t len, GuestSpan* out) const;
  // Host pointer for [uva, uva+len) if it lies wholly inside one region.
  uint8_t* translateUva(uint64_t uva, uint64_t len) const;
  // Host pointer for (bufId, offset, len) if it lies inside that region.
  uint8_t* bufPtr(uint32_t bufId, uint64_t offset, uint64_t len) const;
  // Copies guest-physical bytes, across region boundaries; false if unmapped.
  bool copyFromGpa(uint64_t gpa, void* dst, size_t len) const;
  // The region whose guest bytes [host, host+size) hold p, and p's offset in
  // it. Async-signal-safe (plain reads), for the SIGBUS handler.
  bool locateHost(const void* p, uint32_t* bufId, uint64_t* offset) const;
  const Region* region(uint32_t bufId) const {
    return bufId < kMaxRegions && regions_[bufId].active ? &regions_[bufId] : nullptr;
  }

 private:
  Region regions_[kMaxRegions];
  unsigned count_ = 0;
  // Translation cache (most lookups hit the same region); relaxed: any value
  // is a valid hint, whichever thread stored it.
  mutable std::atomic<unsigned> lastHit_{0};
};

}  // namespace vublk
