// Device side of one VIRTIO 1.x split virtqueue (VIRTIO 1.2 §2.7).
//
//   descriptor table          available ring (driver writes)   used ring (device writes)
//   +------+-----+-----+----+ +-------+-----+---------+------+ +-------+-----+-----------+-------+
//   | addr | len |flags|next| | flags | idx | ring[n] | used | | flags | idx | ring[n]   | avail |
//   |  u64 | u32 | u16 | u16| |  u16  | u16 |   u16   | event| |  u16  | u16 | {id,len}  | event |
//   +------+-----+-----+----+ +-------+-----+---------+------+ +-------+-----+-----------+-------+
//
// Nothing read from guest memory is trusted: indices are range-checked, chain
// walks count descriptors to catch loops, and every addr+len is translated
// through GuestMemory. A broken rule returns false with the rule in `err`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "guest-memory.h"
#include "inflight.h"
#include "shared-arrays.h"

namespace vublk {

// Where popped chains are written: arrays shared with JS (see shared-arrays.h).
struct PopBatch {
  double* chains;    // [head, firstSeg, segCount, headerLen] per chain
  uint8_t* headers;  // 16 bytes per chain
  double* segs;      // [bufId, offset, len, flags] per segment
  unsigned maxChains;
  unsigned maxSegs;
  unsigned nChains = 0;
  unsigned nSegs = 0;
};

constexpr unsigned kMaxQueueSize = 32768;

class SplitVirtqueue {
 public:
  // Changing the size or the addresses unmaps the ring: the pointers map()
  // checked are valid for the old values only; map() again before use.
  void setNum(uint16_t num) {
    num_ = num;
    mapped_ = false;
  }
  uint16_t num() const { return num_; }
  void setAddr(uint64_t descUva, uint64_t usedUva, uint64_t availUva) {
    descUva_ = descUva;
    usedUva_ = usedUva;
    availUva_ = availUva;
    mapped_ = false;
  }
  void setBase(uint16_t idx) {
    lastAvail_ = idx;
    usedIdx_ = idx;
    publishedIdx_ = idx;
    recoverPending_ = true;
  }
  // The queue's record in the inflight region (nullptr: none). The next
  // start() recovers from it.
  void setInflight(InflightQueue* q) {
    inflight_ = q;
    recoverPending_ = true;
  }
  uint16_t lastAvail() const { return lastAvail_; }
  void setEventIdx(bool on) { eventIdx_ = on; }
  void setIndirect(bool on) { indirect_ = on; }

  // Translates the ring addresses through the memory table (again after a
  // memory table change). False if a ring does not lie in guest memory.
  bool map(const GuestMemory& mem, std::string& err);
  void unmap() { mapped_ = false; }
  bool mapped() const { return mapped_; }

  // After map(), on the first start since setBase()/setInflight(): recovers
  // from the inflight region (see InflightQueue::recover) and queues the
  // heads to resubmit ahead of new avail entries. Reads used->idx, so the
  // caller guards it. False with err if the region cannot describe the ring.
  bool start(std::string& err, unsigned* resubmitted, bool* resynced);

  // Pops available chains into batch until it is full or the ring is empty.
  // Returns false on a broken rule (err says which); chains popped before
  // the bad one stay in the batch.
  bool pop(const GuestMemory& mem, PopBatch& batch, std::string& err);
  // True if the driver has made chains available that we have not popped.
  bool hasAvailable() const;

  // Notification suppression while the device polls the ring: without
  // EVENT_IDX sets VRING_USED_F_NO_NOTIFY, with it sets avail_event one
  // behind what was popped and pop() stops moving it (the driver's next
  // publishes do not cross it). Turning it off re-enables kicks (clears the flag, or sets
  // avail_event to what was popped); the caller then needs a full barrier
  // and a hasAvailable() re-check: a driver that published while it saw
  // kicks suppressed did not kick. Writes guest memory: the caller guards.
  void setNotifySuppressed(bool on);
  bool notifySuppressed() const { return suppressed_; }

  // Adds one used element; publish() makes a batch of them visible. Both do
  // nothing on an unmapped ring (the caller checks mapped() and head < num).
  void addUsed(uint32_t head, uint32_t len);
  // Publishes added elements and says whether the driver wants an interrupt.
  bool publish();

 private:
  bool walkChain(const GuestMemory& mem, uint16_t head, PopBatch& batch, std::string& err);
  bool addSpan(const GuestMemory& mem, uint64_t addr, uint32_t len, bool write, PopBatch& batch,
               unsigned firstSeg, unsigned& headerLen, std::string& err);

  uint16_t num_ = 0;
  uint64_t descUva_ = 0, usedUva_ = 0, availUva_ = 0;
  uint8_t* desc_ = nullptr;
  uint8_t* avail_ = nullptr;
  uint8_t* used_ = nullptr;
  bool mapped_ = false;
  bool eventIdx_ = false;
  bool indirect_ = false;
  bool suppressed_ = false;
  uint16_t lastAvail_ = 0;
  uint16_t usedIdx_ = 0;       // next used slot, private until publish()
  uint16_t publishedIdx_ = 0;  // used->idx as the driver last saw it

  InflightQueue* inflight_ = nullptr;
  bool recoverPending_ = true;
  std::vector<uint16_t> resubmit_;  // heads recovered from the region, oldest first
  size_t resubmitPos_ = 0;          // how many of them pop() has delivered
  uint64_t counter_ = 0;            // next DescStateSplit counter
  std::vector<uint16_t> batch_;     // heads added since the last publish()
};

}  // namespace vublk
