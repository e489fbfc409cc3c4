// The inflight region: checks and maps it, marks and clears heads in the
// spec's order, and recovers the heads to resubmit (see inflight.h).
#include "inflight.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "unique-fd.h"

namespace vublk {

namespace {

constexpr uint64_t kQueueAlign = 64;
constexpr unsigned kOffVersion = 8, kOffDescNum = 10, kOffLastBatchHead = 12, kOffUsedIdx = 14;
constexpr unsigned kDescInflight = 0, kDescNext = 6, kDescCounter = 8;

// Read once, stored once: the frontend may change the region under us, and
// the compiler must neither re-read nor merge nor reorder these accesses.
template <typename T>
T load(const uint8_t* p) {
  return __atomic_load_n(reinterpret_cast<const T*>(p), __ATOMIC_RELAXED);
}
template <typename T>
void store(uint8_t* p, T v) {
  __atomic_store_n(reinterpret_cast<T*>(p), v, __ATOMIC_RELAXED);
}
// Orders stores against a SIGKILL: the kernel keeps every store the process
// made, so only the compiler's order matters.
void barrier() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

std::string fmt(const char* f, unsigned long long a, unsigned long long b = 0,
                unsigned long long c = 0) {
  char buf[200];
  snprintf(buf, sizeof buf, f, a, b, c);
  return buf;
}

}  // namespace

uint64_t inflightQueueBytes(unsigned queueSize) {
  uint64_t raw = 16 + 16ull * queueSize;
  return (raw + kQueueAlign - 1) / kQueueAlign * kQueueAlign;
}

bool InflightQueue::inflight(uint16_t head) const {
  return head < descNum_ && load<uint8_t>(desc(head) + kDescInflight) != 0;
}

void InflightQueue::markPopped(uint16_t head, uint64_t counter) {
  if (head >= descNum_) return;
  store<uint64_t>(desc(head) + kDescCounter, counter);
  barrier();
  store<uint8_t>(desc(head) + kDescInflight, 1);
}

void InflightQueue::linkUsed(uint16_t head) {
  if (head >= descNum_) return;
  store<uint16_t>(desc(head) + kDescNext, load<uint16_t>(base_ + kOffLastBatchHead));
  barrier();
  store<uint16_t>(base_ + kOffLastBatchHead, head);
}

void InflightQueue::clearInflight(uint16_t head) {
  if (head >= descNum_) return;
  store<uint8_t>(desc(head) + kDescInflight, 0);
}

void InflightQueue::setUsedIdx(uint16_t idx) { store<uint16_t>(base_ + kOffUsedIdx, idx); }

bool InflightQueue::recover(uint16_t ringNum, const uint8_t* used, uint16_t base, Recovery& out,
                            std::string& err) {
  out = Recovery{};
  const uint16_t ringUsed = __atomic_load_n(reinterpret_cast<const uint16_t*>(used + 2), __ATOMIC_ACQUIRE);
  uint16_t version = load<uint16_t>(base_ + kOffVersion);
  if (version == 0) {
    // A fresh region: ours from GET_INFLIGHT_FD, or one the frontend reset.
    // used_idx starts in step with the ring, so that a later mismatch can
    // only mean an interrupted publish.
    store<uint64_t>(base_, 0);
    store<uint16_t>(base_ + kOffDescNum, descNum_);
    store<uint16_t>(base_ + kOffLastBatchHead, 0);
    store<uint16_t>(base_ + kOffUsedIdx, ringUsed);
    barrier();
    store<uint16_t>(base_ + kOffVersion, kInflightVersion);
    out.lastAvail = base;
    out.usedIdx = base;
    return true;
  }
  if (version != kInflightVersion) {
    err = fmt("inflight region has version %llu (vublk knows %llu)", version, kInflightVersion);
    return false;
  }
  uint16_t descNum = load<uint16_t>(base_ + kOffDescNum);
  if (descNum != descNum_) {
    err = fmt("inflight region has desc_num %llu, SET_INFLIGHT_FD said %llu", descNum, descNum_);
    return false;
  }
  if (ringNum > descNum_) {
    err = fmt("ring of %llu entries does not fit an inflight region of %llu", ringNum, descNum_);
    return false;
  }

  // 1. An interrupted publish: used->idx moved past used_idx by the size of
  //    the last batch, whose heads are linked from last_batch_head. Finish
  //    it (clear those heads) only if the list holds that many distinct
  //    heads of this ring and they are the ids of the used entries the
  //    batch published. Otherwise (a region whose used_idx was never kept in
  //    step: a last_batch_head of 0 would clear descriptor 0 while it is in
  //    flight) the flags are kept and used_idx re-synchronised.
  const uint16_t regionUsed = load<uint16_t>(base_ + kOffUsedIdx);
  const uint16_t behind = static_cast<uint16_t>(ringUsed - regionUsed);
  if (behind != 0) {
    std::vector<uint16_t> batch;
    std::vector<int> seen(ringNum, 0);  // 1: in the list; 2: also in the used ring
    uint16_t h = load<uint16_t>(base_ + kOffLastBatchHead);
    bool explained = behind <= ringNum;
    for (unsigned k = 0; explained && k < behind; k++) {
      if (h >= ringNum || seen[h]) {
        explained = false;
        break;
      }
      seen[h] = 1;
      batch.push_back(h);
      h = load<uint16_t>(desc(h) + kDescNext);
    }
    for (unsigned k = 0; explained && k < behind; k++) {
      uint32_t id;
      memcpy(&id, used + 4 + 8u * (static_cast<uint16_t>(regionUsed + k) % ringNum), 4);
      if (id >= ringNum || seen[id] != 1) {
        explained = false;
        break;
      }
      seen[id] = 2;
    }
    if (explained) {
      for (uint16_t b : batch) clearInflight(b);
    } else {
      out.resynced = true;
    }
    barrier();
    setUsedIdx(ringUsed);
  }

  // 2. Whatever is still marked was popped and never used: resubmit it in
  //    the order it was popped. Marks past the ring's size cannot be heads.
  std::vector<std::pair<uint64_t, uint16_t>> marked;
  uint64_t maxCounter = 0;
  for (unsigned i = 0; i < descNum_; i++) {
    if (!load<uint8_t>(desc(static_cast<uint16_t>(i)) + kDescInflight)) continue;
    if (i >= ringNum) {
      clearInflight(static_cast<uint16_t>(i));
      continue;
    }
    uint64_t c = load<uint64_t>(desc(static_cast<uint16_t>(i)) + kDescCounter);
    marked.emplace_back(c, static_cast<uint16_t>(i));
    maxCounter = std::max(maxCounter, c);
  }
  std::sort(marked.begin(), marked.end());
  for (auto& m : marked) out.resubmit.push_back(m.second);
  out.nextCounter = marked.empty() ? 0 : maxCounter + 1;
  out.usedIdx = ringUsed;
  out.lastAvail = static_cast<uint16_t>(ringUsed + marked.size());
  return true;
}

bool InflightRegion::map(int fd, uint64_t size, uint64_t offset, unsigned numQueues,
                         unsigned queueSize, unsigned maxQueues, unsigned maxQueueSize,
                         std::string& err) {
  UniqueFd owned(fd);  // closed on every return: the mapping keeps what it needs
  if (numQueues < 1 || numQueues > maxQueues) {
    err = fmt("SET_INFLIGHT_FD num_queues %llu is outside 1..%llu", numQueues, maxQueues);
    return false;
  }
  if (queueSize < 1 || queueSize > maxQueueSize) {
    err = fmt("SET_INFLIGHT_FD queue_size %llu is outside 1..%llu", queueSize, maxQueueSize);
    return false;
  }
  uint64_t need = inflightQueueBytes(queueSize) * numQueues;
  if (size != need) {
    err = fmt("SET_INFLIGHT_FD mmap_size %llu is not the %llu bytes %llu queues need", size, need,
              numQueues);
    err += fmt(" of size %llu", queueSize);
    return false;
  }
  long page = sysconf(_SC_PAGESIZE);
  if (offset % static_cast<uint64_t>(page)) {
    err = fmt("SET_INFLIGHT_FD mmap_offset %llu is not page aligned", offset);
    return false;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    err = fmt("SET_INFLIGHT_FD fd cannot be examined (errno %llu)", errno);
    return false;
  }
  if (offset > static_cast<uint64_t>(st.st_size) || size > static_cast<uint64_t>(st.st_size) - offset) {
    err = fmt("SET_INFLIGHT_FD mmap_offset %llu + mmap_size %llu passes the file's end (%llu)", offset,
              size, static_cast<unsigned long long>(st.st_size));
    return false;
  }
  // A file that can shrink under the mapping would fault the loop thread.
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
    err = "SET_INFLIGHT_FD fd is not a memfd sealed against shrinking";
    return false;
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) {
    err = fmt("SET_INFLIGHT_FD region cannot be mapped (errno %llu)", errno);
    return false;
  }
  std::vector<InflightQueue> queues;
  for (unsigned q = 0; q < numQueues; q++) {
    auto* base = static_cast<uint8_t*>(p) + inflightQueueBytes(queueSize) * q;
    uint16_t version = load<uint16_t>(base + kOffVersion);
    uint16_t descNum = load<uint16_t>(base + kOffDescNum);
    if (version > kInflightVersion || (version == kInflightVersion && descNum != queueSize)) {
      munmap(p, size);
      err = version > kInflightVersion
                ? fmt("SET_INFLIGHT_FD queue %llu region has version %llu (vublk knows %llu)", q,
                      version, kInflightVersion)
                : fmt("SET_INFLIGHT_FD queue %llu region has desc_num %llu, not queue_size %llu", q,
                      descNum, queueSize);
      return false;
    }
    queues.emplace_back(base, static_cast<uint16_t>(queueSize));
  }
  unmap();
  addr_ = p;
  len_ = size;
  queues_ = std::move(queues);
  return true;
}

void InflightRegion::unmap() {
  queues_.clear();
  if (addr_) munmap(addr_, len_);
  addr_ = nullptr;
  len_ = 0;
}

InflightQueue* InflightRegion::queue(unsigned q) {
  return q < queues_.size() ? &queues_[q] : nullptr;
}

int createInflightFd(unsigned numQueues, unsigned queueSize, uint64_t* size) {
  *size = inflightQueueBytes(queueSize) * numQueues;
  UniqueFd fd(memfd_create("vublk-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return -errno;
  if (ftruncate(fd.get(), static_cast<off_t>(*size)) != 0 ||
      fcntl(fd.get(), F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) != 0)
    return -errno;  // read before fd's destructor closes it
  return fd.release();
}

}  // namespace vublk
