// The inflight region (vhost-user "Inflight I/O tracking", split rings):
// shared memory the frontend keeps across backend restarts, in which the
// backend records which heads it has popped and not yet used. vublk
// completes requests out of order, so after a crash the used index alone
// cannot say which popped requests were lost; this record can.
//
//   +---------------+---------------+-----+---------------+
//   | queue0 region | queue1 region | ... | queueN region |   each kQueueAlign-aligned
//   +---------------+---------------+-----+---------------+
//   queue region: features u64 | version u16 | desc_num u16 |
//                 last_batch_head u16 | used_idx u16 | DescStateSplit desc[desc_num]
//   DescStateSplit: inflight u8 | pad[5] | next u16 | counter u64      (16 bytes)
//
// The frontend can write this memory at any time: every value read from it
// is read once and checked before use. The file is sealed against
// shrinking (SET_INFLIGHT_FD refuses one that is not), so it cannot fault.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vublk {

constexpr uint16_t kInflightVersion = 1;

// Bytes of one queue's region for a ring of queueSize entries.
uint64_t inflightQueueBytes(unsigned queueSize);

// One queue's QueueRegionSplit. The ring calls mark/link/clear in the order
// the spec gives; the stores are separated by compiler barriers so that a
// SIGKILL between any two of them leaves a state recover() understands
// (nothing else reads the region while this process lives).
class InflightQueue {
 public:
  InflightQueue(uint8_t* base, uint16_t descNum) : base_(base), descNum_(descNum) {}

  // What recover() decided for a ring about to start.
  struct Recovery {
    uint16_t lastAvail = 0;         // where popping resumes
    uint16_t usedIdx = 0;           // the ring's used index
    std::vector<uint16_t> resubmit; // heads still in flight, oldest first
    uint64_t nextCounter = 0;
    // The region's used_idx was behind the ring by a number no interrupted
    // batch explains: nothing was cleared, the record was re-synchronised.
    bool resynced = false;
  };

  // For a ring of ringNum entries whose used ring starts at `used` (flags,
  // idx, ring[]): a fresh region (version 0) is initialised and nothing
  // resubmitted (lastAvail = `base`, what SET_VRING_BASE said); otherwise an
  // interrupted publish is finished and the heads still marked in flight
  // are collected. False with err if the region cannot describe this ring.
  // The caller guards the reads of guest memory.
  bool recover(uint16_t ringNum, const uint8_t* used, uint16_t base, Recovery& out,
               std::string& err);

  bool inflight(uint16_t head) const;
  // Popped: counter first, then the flag.
  void markPopped(uint16_t head, uint64_t counter);
  // Steps 2-3 of a publish, for each head of the batch in turn.
  void linkUsed(uint16_t head);
  // After used->idx: clear each head of the batch, then store used_idx.
  void clearInflight(uint16_t head);
  void setUsedIdx(uint16_t idx);

 private:
  uint8_t* desc(uint16_t i) const { return base_ + 16 + 16u * i; }
  uint8_t* base_;
  uint16_t descNum_;
};

// The whole mapping SET_INFLIGHT_FD hands over.
class InflightRegion {
 public:
  InflightRegion() = default;
  ~InflightRegion() { unmap(); }
  InflightRegion(const InflightRegion&) = delete;
  InflightRegion& operator=(const InflightRegion&) = delete;

  // Checks and maps [offset, offset+size) of fd (always closed). False with
  // err naming the field that is wrong.
  bool map(int fd, uint64_t size, uint64_t offset, unsigned numQueues, unsigned queueSize,
           unsigned maxQueues, unsigned maxQueueSize, std::string& err);
  void unmap();
  bool mapped() const { return addr_ != nullptr; }
  // Queue q's region, or nullptr when q is past num_queues or nothing is mapped.
  InflightQueue* queue(unsigned q);

 private:
  void* addr_ = nullptr;
  uint64_t len_ = 0;
  std::vector<InflightQueue> queues_;
};

// Creates the zeroed, sealed memfd GET_INFLIGHT_FD replies with. Returns the
// fd or -errno; size receives its length.
int createInflightFd(unsigned numQueues, unsigned queueSize, uint64_t* size);

}  // namespace vublk
