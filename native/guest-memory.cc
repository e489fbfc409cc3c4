// Guest memory table: maps, removes and bounds-checks the regions and
// translates guest-physical and frontend addresses (see guest-memory.h).
#include "guest-memory.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "unique-fd.h"

namespace vublk {

namespace {

// Ranges [a, a+alen) and [b, b+blen) overlap. Callers have checked no wrap.
bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
  return a < b + blen && b < a + alen;
}

bool wraps(uint64_t base, uint64_t len) { return base + len < base; }

}  // namespace

int GuestMemory::add(int fd, uint64_t gpa, uint64_t size, uint64_t uva, uint64_t mmapOffset,
                     std::string& err) {
  UniqueFd owned(fd);  // closed on every return: the mapping keeps what it needs

  if (size == 0) {
    err = "memory region has size 0";
    return -1;
  }
  if (wraps(gpa, size) || wraps(uva, size) || wraps(mmapOffset, size)) {
    err = "memory region address + size wraps past 2^64";
    return -1;
  }
  if (count_ >= kMaxRegions) {
    err = "more than 509 memory regions";
    return -1;
  }
  for (unsigned i = 0; i < kMaxRegions; i++) {
    const Region& r = regions_[i];
    if (!r.active) continue;
    if (overlaps(gpa, size, r.gpa, r.size)) {
      err = "memory region overlaps another in guest-physical space";
      return -1;
    }
    if (overlaps(uva, size, r.uva, r.size)) {
      err = "memory region overlaps another in frontend address space";
      return -1;
    }
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    err = std::string("memory region fd: fstat failed: ") + strerror(errno);
    return -1;
  }
  if (!S_ISREG(st.st_mode)) {
    err = "memory region fd is not a regular file or memfd";
    return -1;
  }
  uint64_t end = mmapOffset + size;
  if (st.st_size < 0 || end > static_cast<uint64_t>(st.st_size)) {
    err = "memory region mmap_offset + size is beyond the end of its fd";
    return -1;
  }
  if (end > SIZE_MAX) {
    err = "memory region does not fit this address space";
    return -1;
  }
  // Map from file offset 0 so mmap_offset need not be page aligned.
  void* base = mmap(nullptr, static_cast<size_t>(end), PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (base == MAP_FAILED) {
    err = std::string("memory region mmap failed: ") + strerror(errno);
    return -1;
  }
  for (unsigned i = 0; i < kMaxRegions; i++) {
    Region& r = regions_[i];
    if (r.active) continue;
    r.gpa = gpa;
    r.size = size;
    r.uva = uva;
    r.mmapOffset = mmapOffset;
    r.mapBase = base;
    r.mapLen = static_cast<size_t>(end);
    // SAFETY: mmapOffset + size == mapLen was checked, so host..host+size is mapped.
    r.host = static_cast<uint8_t*>(base) + mmapOffset;
    r.active = true;
    count_++;
    return static_cast<int>(i);
  }
  munmap(base, static_cast<size_t>(end));  // unreachable: count_ < kMaxRegions
  err = "no free memory slot";
  return -1;
}

bool GuestMemory::remove(uint64_t gpa, uint64_t size) {
  for (unsigned i = 0; i < kMaxRegions; i++) {
    Region& r = regions_[i];
    if (!r.active || r.gpa != gpa || r.size != size) continue;
    munmap(r.mapBase, r.mapLen);
    r = Region();
    count_--;
    return true;
  }
  return false;
}

void GuestMemory::clear() {
  for (unsigned i = 0; i < kMaxRegions; i++) {
    Region& r = regions_[i];
    if (!r.active) continue;
    munmap(r.mapBase, r.mapLen);
    r = Region();
  }
  count_ = 0;
}

bool GuestMemory::translateGpa(uint64_t gpa, uint64_t len, GuestSpan* out) const {
  auto fits = [&](unsigned i) {
    const Region& r = regions_[i];
    return r.active && gpa >= r.gpa && gpa - r.gpa < r.size;
  };
  unsigned hit = kMaxRegions;
  unsigned last = lastHit_.load(std::memory_order_relaxed);
  if (fits(last)) {
    hit = last;
  } else {
    for (unsigned i = 0; i < kMaxRegions; i++) {
      if (fits(i)) {
        hit = i;
        break;
      }
    }
  }
  if (hit == kMaxRegions) return false;
  lastHit_.store(hit, std::memory_order_relaxed);
  const Region& r = regions_[hit];
  uint64_t off = gpa - r.gpa;
  uint64_t avail = r.size - off;
  out->bufId = hit;
  out->offset = off;
  out->len = len < avail ? len : avail;
  return true;
}

uint8_t* GuestMemory::translateUva(uint64_t uva, uint64_t len) const {
  if (wraps(uva, len)) return nullptr;
  for (unsigned i = 0; i < kMaxRegions; i++) {
    const Region& r = regions_[i];
    if (!r.active || uva < r.uva) continue;
    uint64_t off = uva - r.uva;
    if (off >= r.size || len > r.size - off) continue;
    return r.host + off;
  }
  return nullptr;
}

uint8_t* GuestMemory::bufPtr(uint32_t bufId, uint64_t offset, uint64_t len) const {
  const Region* r = region(bufId);
  if (!r || offset > r->size || len > r->size - offset) return nullptr;
  return r->host + offset;
}

bool GuestMemory::locateHost(const void* p, uint32_t* bufId, uint64_t* offset) const {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (unsigned i = 0; i < kMaxRegions; i++) {
    const Region& r = regions_[i];
    uintptr_t host = reinterpret_cast<uintptr_t>(r.host);
    if (!r.active || a < host || a - host >= r.size) continue;
    *bufId = i;
    *offset = a - host;
    return true;
  }
  return false;
}

bool GuestMemory::copyFromGpa(uint64_t gpa, void* dst, size_t len) const {
  if (wraps(gpa, len)) return false;
  uint8_t* out = static_cast<uint8_t*>(dst);
  while (len > 0) {
    GuestSpan s;
    if (!translateGpa(gpa, len, &s)) return false;
    memcpy(out, regions_[s.bufId].host + s.offset, s.len);
    out += s.len;
    gpa += s.len;
    len -= s.len;
  }
  return true;
}

}  // namespace vublk
