// Split virtqueue, device side: maps the rings, walks and pops descriptor
// chains under every guest rule, publishes used entries (see split-virtqueue.h).
#include "split-virtqueue.h"

#include <cstdio>

#include "crash-point.h"
#include <cstring>

namespace vublk {

namespace {

constexpr uint16_t kDescNext = 1;
constexpr uint16_t kDescWrite = 2;
constexpr uint16_t kDescIndirect = 4;
constexpr uint16_t kAvailNoInterrupt = 1;
constexpr uint16_t kUsedNoNotify = 1;

struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Desc) == 16, "virtq_desc is 16 bytes");

// Little-endian loads/stores on guest memory. x86-64 and aarch64 hosts are LE;
// memcpy keeps unaligned guest rings legal C++.
uint16_t load16(const uint8_t* p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return v;
}
void store16(uint8_t* p, uint16_t v) { memcpy(p, &v, 2); }
void store32(uint8_t* p, uint32_t v) { memcpy(p, &v, 4); }

uint16_t loadAcquire16(const uint8_t* p) {
  // SAFETY: ring fields are 2-byte aligned: map() checks the ring alignment.
  return __atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_ACQUIRE);
}
void storeRelease16(uint8_t* p, uint16_t v) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, __ATOMIC_RELEASE);
}

std::string fmt(const char* f, unsigned long long a, unsigned long long b = 0,
                unsigned long long c = 0) {
  char buf[160];
  snprintf(buf, sizeof buf, f, a, b, c);
  return buf;
}

// vring_need_event from the spec: has new_idx passed event_idx since old_idx?
bool needEvent(uint16_t eventIdx, uint16_t newIdx, uint16_t oldIdx) {
  return static_cast<uint16_t>(newIdx - eventIdx - 1) < static_cast<uint16_t>(newIdx - oldIdx);
}

}  // namespace

bool SplitVirtqueue::map(const GuestMemory& mem, std::string& err) {
  mapped_ = false;
  if (num_ == 0) {
    err = "ring size was never set";
    return false;
  }
  // VIRTIO 1.2 §2.7: desc 16-byte, avail 2-byte, used 4-byte alignment.
  if (descUva_ % 16 || availUva_ % 2 || usedUva_ % 4) {
    err = "ring address is misaligned";
    return false;
  }
  desc_ = mem.translateUva(descUva_, 16ull * num_);
  avail_ = mem.translateUva(availUva_, 6ull + 2ull * num_);
  used_ = mem.translateUva(usedUva_, 6ull + 8ull * num_);
  if (!desc_ || !avail_ || !used_) {
    err = fmt("ring of size %llu does not lie in guest memory", num_);
    return false;
  }
  mapped_ = true;
  return true;
}

bool SplitVirtqueue::start(std::string& err, unsigned* resubmitted, bool* resynced) {
  *resubmitted = 0;
  *resynced = false;
  if (!recoverPending_) return true;
  if (inflight_) {
    InflightQueue::Recovery r;
    if (!inflight_->recover(num_, used_, lastAvail_, r, err)) return false;
    lastAvail_ = r.lastAvail;
    usedIdx_ = r.usedIdx;
    publishedIdx_ = r.usedIdx;
    resubmit_ = std::move(r.resubmit);
    counter_ = r.nextCounter;
    *resubmitted = static_cast<unsigned>(resubmit_.size());
    *resynced = r.resynced;
  } else {
    resubmit_.clear();
  }
  resubmitPos_ = 0;
  batch_.clear();
  recoverPending_ = false;
  return true;
}

bool SplitVirtqueue::hasAvailable() const {
  return mapped_ && (resubmitPos_ < resubmit_.size() || loadAcquire16(avail_ + 2) != lastAvail_);
}

bool SplitVirtqueue::pop(const GuestMemory& mem, PopBatch& batch, std::string& err) {
  if (!mapped_) return true;
  // Heads an earlier backend popped and never used go first, oldest first:
  // the avail position already counts them.
  while (resubmitPos_ < resubmit_.size()) {
    if (batch.nChains >= batch.maxChains || batch.maxSegs - batch.nSegs < kMaxChainSegs) return true;
    if (!walkChain(mem, resubmit_[resubmitPos_], batch, err)) return false;
    resubmitPos_++;
  }
  for (;;) {
    uint16_t availIdx = loadAcquire16(avail_ + 2);
    uint16_t pending = static_cast<uint16_t>(availIdx - lastAvail_);
    if (pending > num_) {
      err = fmt("Guest moved avail index from %llu to %llu (queue size %llu)", lastAvail_,
                availIdx, num_);
      return false;
    }
    while (pending > 0) {
      if (batch.nChains >= batch.maxChains || batch.maxSegs - batch.nSegs < kMaxChainSegs) {
        return true;  // batch full; the caller delivers it and pops again
      }
      uint16_t head = load16(avail_ + 4 + 2u * (lastAvail_ % num_));
      if (head >= num_) {
        err = fmt("Guest says index %llu is available (queue size %llu)", head, num_);
        return false;
      }
      if (inflight_ && inflight_->inflight(head)) {
        err = fmt("Guest made head %llu available again while it is in flight", head);
        return false;
      }
      if (!walkChain(mem, head, batch, err)) return false;
      if (inflight_) {
        inflight_->markPopped(head, counter_++);
        crashPoint(CrashPoint::kPopMarked, 1);
      }
      lastAvail_++;
      pending--;
    }
    if (!eventIdx_ || suppressed_) return true;
    // Ask for a kick when the driver adds past what we popped (avail_event),
    // then look again: the driver may have added before it saw the new value.
    store16(used_ + 4 + 8u * num_, lastAvail_);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (loadAcquire16(avail_ + 2) == lastAvail_) return true;
  }
}

bool SplitVirtqueue::addSpan(const GuestMemory& mem, uint64_t addr, uint32_t len, bool write,
                             PopBatch& batch, unsigned firstSeg, unsigned& headerLen,
                             std::string& err) {
  if (addr + len < addr) {
    err = fmt("descriptor addr 0x%llx len %llu wraps past 2^64", addr, len);
    return false;
  }
  const uint64_t descAddr = addr;
  uint64_t remaining = len;
  while (remaining > 0) {
    GuestSpan s;
    if (!mem.translateGpa(addr, remaining, &s)) {
      err = fmt("descriptor addr 0x%llx len %llu is outside guest memory", descAddr, len);
      return false;
    }
    if (batch.nSegs - firstSeg >= kMaxChainSegs) {
      err = fmt("chain needs more than %llu memory segments", kMaxChainSegs);
      return false;
    }
    double* seg = batch.segs + static_cast<size_t>(batch.nSegs) * kSegStride;
    seg[0] = s.bufId;
    seg[1] = static_cast<double>(s.offset);
    seg[2] = static_cast<double>(s.len);
    seg[3] = write ? kSegWrite : 0;
    if (!write && headerLen < kHeaderBytes) {
      uint64_t take = kHeaderBytes - headerLen;
      if (take > s.len) take = s.len;
      uint8_t* src = mem.bufPtr(s.bufId, s.offset, take);
      memcpy(batch.headers + static_cast<size_t>(batch.nChains) * kHeaderBytes + headerLen, src,
             take);
      headerLen += static_cast<unsigned>(take);
    }
    batch.nSegs++;
    addr += s.len;
    remaining -= s.len;
  }
  return true;
}

bool SplitVirtqueue::walkChain(const GuestMemory& mem, uint16_t head, PopBatch& batch,
                               std::string& err) {
  unsigned firstSeg = batch.nSegs;
  unsigned headerLen = 0;
  uint64_t total = 0;
  bool sawWrite = false;

  // The table being walked: the ring's own, or one indirect table.
  const uint8_t* table = desc_;
  uint64_t tableGpa = 0;  // indirect table not contiguous in our map: read by copy
  unsigned tableSize = num_;
  bool inIndirect = false;
  unsigned i = head;
  unsigned walked = 0;

  for (;;) {
    if (++walked > tableSize) {
      err = fmt("Looped descriptor chain at head %llu", head);
      batch.nSegs = firstSeg;
      return false;
    }
    Desc d;
    if (table) {
      memcpy(&d, table + 16ull * i, 16);
    } else if (!mem.copyFromGpa(tableGpa + 16ull * i, &d, 16)) {
      err = "indirect table is outside guest memory";
      batch.nSegs = firstSeg;
      return false;
    }
    if (d.flags & kDescIndirect) {
      if (inIndirect) {
        err = "nested indirect descriptor";
      } else if (!indirect_) {
        err = "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC";
      } else if (walked != 1) {
        err = "indirect descriptor is not the head of its chain";
      } else if (d.flags & kDescNext) {
        err = "indirect descriptor has NEXT set";
      } else if (d.len == 0 || d.len % 16 || d.len / 16 > kMaxChainDescs) {
        err = fmt("indirect table length %llu is not a multiple of 16 in 16..%llu", d.len,
                  16ull * kMaxChainDescs);
      } else if (d.addr + d.len < d.addr) {
        err = "indirect table address wraps past 2^64";
      }
      if (!err.empty()) {
        batch.nSegs = firstSeg;
        return false;
      }
      GuestSpan s;
      if (mem.translateGpa(d.addr, d.len, &s) && s.len == d.len) {
        table = mem.bufPtr(s.bufId, s.offset, s.len);
      } else {
        table = nullptr;  // spans regions (or is unmapped: the copy will say)
        tableGpa = d.addr;
      }
      tableSize = d.len / 16;
      inIndirect = true;
      i = 0;
      walked = 0;
      continue;
    }
    bool write = d.flags & kDescWrite;
    if (!write && sawWrite) {
      err = fmt("readable descriptor follows a writable one at head %llu", head);
      batch.nSegs = firstSeg;
      return false;
    }
    sawWrite = sawWrite || write;
    total += d.len;
    if (total > UINT32_MAX) {
      err = fmt("chain at head %llu is longer than 4 GiB", head);
      batch.nSegs = firstSeg;
      return false;
    }
    if (d.len > 0 && !addSpan(mem, d.addr, d.len, write, batch, firstSeg, headerLen, err)) {
      batch.nSegs = firstSeg;
      return false;
    }
    if (!(d.flags & kDescNext)) break;
    if (d.next >= tableSize) {
      err = fmt("Guest says next index %llu (table size %llu)", d.next, tableSize);
      batch.nSegs = firstSeg;
      return false;
    }
    i = d.next;
  }
  double* c = batch.chains + static_cast<size_t>(batch.nChains) * kChainStride;
  c[0] = head;
  c[1] = firstSeg;
  c[2] = batch.nSegs - firstSeg;
  c[3] = headerLen;
  batch.nChains++;
  return true;
}

void SplitVirtqueue::setNotifySuppressed(bool on) {
  if (!mapped_) {
    suppressed_ = false;
    return;
  }
  if (on == suppressed_) return;
  suppressed_ = on;
  if (!eventIdx_) {
    store16(used_, on ? kUsedNoNotify : 0);
    return;
  }
  // The driver kicks when its publish moves avail idx across avail_event.
  // One behind what was popped is behind every index it can publish next
  // (it holds at most num entries ahead of us), so it never kicks.
  store16(used_ + 4 + 8u * num_, static_cast<uint16_t>(on ? lastAvail_ - 1 : lastAvail_));
}

void SplitVirtqueue::addUsed(uint32_t head, uint32_t len) {
  if (!mapped_) return;
  uint8_t* e = used_ + 4 + 8u * (usedIdx_ % num_);
  store32(e, head);
  store32(e + 4, len);
  usedIdx_++;
  if (inflight_) batch_.push_back(static_cast<uint16_t>(head));
}

// With an inflight region the stores follow the spec's order, so that a
// SIGKILL between any two leaves a state recover() puts right: link each
// head into the last-batch list, publish used->idx, clear each head's
// flag, then store used_idx.
bool SplitVirtqueue::publish() {
  if (!mapped_) return false;
  uint16_t old = publishedIdx_;
  if (old == usedIdx_) return false;
  const unsigned n = static_cast<unsigned>(batch_.size());
  if (inflight_) {
    for (uint16_t h : batch_) inflight_->linkUsed(h);
    crashPoint(CrashPoint::kUsedWritten, n);
  }
  storeRelease16(used_ + 2, usedIdx_);
  publishedIdx_ = usedIdx_;
  if (inflight_) {
    // A release store keeps earlier stores before it, not later ones after.
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    crashPoint(CrashPoint::kUsedPublished, n);
    for (unsigned i = 0; i < n; i++) {
      inflight_->clearInflight(batch_[i]);
      if (i == 0 && n >= 2) crashPoint(CrashPoint::kInflightPartlyCleared, n);
    }
    crashPoint(CrashPoint::kInflightCleared, n);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    inflight_->setUsedIdx(usedIdx_);
    batch_.clear();
  }
  // Order the used->idx store before reading what the driver asked for.
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  if (eventIdx_) {
    uint16_t usedEvent = load16(avail_ + 4 + 2u * num_);
    return needEvent(usedEvent, usedIdx_, old);
  }
  return !(load16(avail_) & kAvailNoInterrupt);
}

}  // namespace vublk
