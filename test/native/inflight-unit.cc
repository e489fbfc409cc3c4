// Unit test of the inflight region (native/inflight.cc) driven through the
// real split virtqueue (native/split-virtqueue.cc). Built and run by
// inflight-unit.test.ts under ASan + UBSan. Prints "ok <name>" per check and
// exits 1 at the first that fails.
//
// Crash points: for each point of the completion publish the test re-runs
// itself as a child with VUBLK_TEST_CRASH_AT set. The child pops six heads
// (0..5) into the shared guest memory and inflight region, completes head 1
// alone, then heads 3 and 0 as one batch, and is SIGKILLed by the crash
// point. The parent then starts a new ring on the same memory, as the next
// backend would, and checks what it resubmits: exactly the heads whose used
// entries the driver cannot see, oldest first, and nothing the driver got.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../native/guest-memory.h"
#include "../../native/inflight.h"
#include "../../native/split-virtqueue.h"

using namespace vublk;

namespace {

constexpr uint64_t kGuestBytes = 64 * 1024;
constexpr uint64_t kGpa = 0x100000;  // uva == gpa
constexpr uint64_t kDesc = kGpa, kAvail = kGpa + 0x1000, kUsed = kGpa + 0x2000, kData = kGpa + 0x4000;
constexpr uint16_t kNum = 8;

void check(bool ok, const std::string& name) {
  if (!ok) {
    std::printf("FAIL %s\n", name.c_str());
    std::exit(1);
  }
  std::printf("ok %s\n", name.c_str());
}

struct Shared {
  int guestFd = -1;
  int inflightFd = -1;
  uint64_t inflightBytes = 0;
  uint8_t* guest = nullptr;
  uint8_t* region = nullptr;

  void create() {
    guestFd = memfd_create("guest", 0);
    if (guestFd < 0 || ftruncate(guestFd, kGuestBytes) != 0) std::abort();
    int fd = createInflightFd(1, kNum, &inflightBytes);
    if (fd < 0) std::abort();
    inflightFd = fcntl(fd, F_DUPFD, 3);  // without close-on-exec: the child inherits it
    close(fd);
    mapBoth();
    // Six one-descriptor chains (16 readable bytes each) made available.
    for (uint16_t i = 0; i < kNum; i++) {
      uint8_t* d = at(kDesc + 16u * i);
      uint64_t addr = kData + 64u * i;
      uint32_t len = 16;
      memcpy(d, &addr, 8);
      memcpy(d + 8, &len, 4);
    }
    for (uint16_t i = 0; i < 6; i++) memcpy(at(kAvail + 4 + 2u * i), &i, 2);
    uint16_t idx = 6;
    memcpy(at(kAvail + 2), &idx, 2);
  }
  void mapBoth() {
    guest = static_cast<uint8_t*>(mmap(nullptr, kGuestBytes, PROT_READ | PROT_WRITE, MAP_SHARED, guestFd, 0));
    region = static_cast<uint8_t*>(mmap(nullptr, inflightBytes, PROT_READ | PROT_WRITE, MAP_SHARED, inflightFd, 0));
    if (guest == MAP_FAILED || region == MAP_FAILED) std::abort();
  }
  uint8_t* at(uint64_t gpa) { return guest + (gpa - kGpa); }
  uint16_t usedIdx() {
    uint16_t v;
    memcpy(&v, at(kUsed + 2), 2);
    return v;
  }
  uint16_t regionU16(unsigned off) {
    uint16_t v;
    memcpy(&v, region + off, 2);
    return v;
  }
  uint8_t descInflight(unsigned i) { return region[16 + 16 * i]; }
};

// A backend's view of the shared memory: its own maps, region and ring.
struct Backend {
  GuestMemory mem;
  InflightRegion region;
  SplitVirtqueue vq;
  std::vector<double> chains = std::vector<double>(64 * kChainStride);
  std::vector<uint8_t> headers = std::vector<uint8_t>(64 * kHeaderBytes);
  std::vector<double> segs = std::vector<double>(4 * kMaxChainSegs * kSegStride);

  bool attach(Shared& s, uint16_t base, std::string& err, unsigned* resubmitted, bool* resynced) {
    if (mem.add(dup(s.guestFd), kGpa, kGuestBytes, kGpa, 0, err) < 0) return false;
    if (!region.map(dup(s.inflightFd), s.inflightBytes, 0, 1, kNum, 1, kNum, err)) return false;
    vq.setNum(kNum);
    vq.setAddr(kDesc, kUsed, kAvail);
    vq.setBase(base);
    vq.setInflight(region.queue(0));
    if (!vq.map(mem, err)) return false;
    return vq.start(err, resubmitted, resynced);
  }
  // Heads of the chains one pop delivers.
  std::vector<uint16_t> pop(std::string& err, bool* ok) {
    PopBatch b{chains.data(), headers.data(), segs.data(), 64, static_cast<unsigned>(segs.size() / kSegStride)};
    *ok = vq.pop(mem, b, err);
    std::vector<uint16_t> heads;
    for (unsigned i = 0; i < b.nChains; i++) heads.push_back(static_cast<uint16_t>(chains[i * kChainStride]));
    return heads;
  }
};

[[noreturn]] void child(const char* fdArgs) {
  Shared s;
  unsigned long long bytes = 0;
  if (sscanf(fdArgs, "%d,%d,%llu", &s.guestFd, &s.inflightFd, &bytes) != 3) std::exit(2);
  s.inflightBytes = bytes;
  Backend b;
  std::string err;
  unsigned resubmitted;
  bool resynced, ok;
  if (!b.attach(s, 0, err, &resubmitted, &resynced)) std::exit(2);
  b.pop(err, &ok);  // pop-marked dies in here
  b.vq.addUsed(1, 0);
  b.vq.publish();
  b.vq.addUsed(3, 0);
  b.vq.addUsed(0, 0);
  b.vq.publish();   // the other points die in here
  std::exit(3);     // the crash point never fired
}

void crashAndRecover(const char* self, const char* point, std::vector<uint16_t> expect,
                     std::vector<uint16_t> expectPop, uint16_t expectUsed) {
  Shared s;
  s.create();
  pid_t pid = fork();
  if (pid == 0) {
    std::string env = std::string(point) + (strcmp(point, "pop-marked") == 0 ? ":1" : ":2");
    setenv("VUBLK_TEST_CRASH_AT", env.c_str(), 1);
    char fds[64];
    snprintf(fds, sizeof fds, "%d,%d,%llu", s.guestFd, s.inflightFd, static_cast<unsigned long long>(s.inflightBytes));
    execl(self, self, "child", fds, static_cast<char*>(nullptr));
    std::_Exit(4);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  std::string name = std::string(point) + ": ";
  check(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, name + "the child died by SIGKILL at the point");
  check(s.usedIdx() == expectUsed, name + "used->idx as the driver sees it");

  // The next backend: QEMU hands it the used index as the ring base.
  Backend b;
  std::string err;
  unsigned resubmitted = 0;
  bool resynced = true, ok;
  check(b.attach(s, s.usedIdx(), err, &resubmitted, &resynced), name + "recovery accepts the region " + err);
  check(!resynced, name + "an interrupted batch is explained, not re-synchronised");
  check(resubmitted == expect.size(), name + "resubmits " + std::to_string(expect.size()) + " heads, got " + std::to_string(resubmitted));
  check(s.regionU16(14) == s.usedIdx(), name + "used_idx is in step with the ring again");
  for (uint16_t h = 0; h < 6; h++) {
    bool lost = false;
    for (uint16_t e : expect) lost = lost || e == h;
    check(s.descInflight(h) == (lost ? 1 : 0), name + "head " + std::to_string(h) + " flag");
  }
  std::vector<uint16_t> got = b.pop(err, &ok);
  check(ok && got == expectPop, name + "pop delivers the lost heads first, oldest first, then new ones");
  // Completing them all leaves nothing in flight and the ring consistent.
  for (uint16_t h : got) b.vq.addUsed(h, 0);
  b.vq.publish();
  check(s.usedIdx() == 6, name + "every head used once in the end");
  for (uint16_t h = 0; h < kNum; h++) check(s.descInflight(h) == 0, name + "no flag left " + std::to_string(h));
}

// A region a backend once initialised without keeping used_idx in step:
// used_idx 0 and last_batch_head 0 while the ring is at 3, and head 0 in
// flight. Clearing "the last batch" from head 0 would lose head 0.
void staleUsedIdx() {
  Shared s;
  s.create();
  Backend first;
  std::string err;
  unsigned resubmitted;
  bool resynced, ok;
  check(first.attach(s, 0, err, &resubmitted, &resynced), "stale: first backend starts");
  // Completed earlier: heads 5, 6, 7 sit in used entries 0..2.
  for (uint32_t i = 0; i < 3; i++) {
    uint32_t id = 5 + i;
    memcpy(s.at(kUsed + 4 + 8 * i), &id, 4);
  }
  uint16_t three = 3;
  memcpy(s.at(kUsed + 2), &three, 2);
  uint16_t zero = 0;
  memcpy(s.region + 14, &zero, 2);  // used_idx
  memcpy(s.region + 12, &zero, 2);  // last_batch_head
  memset(s.region + 16, 0, 16 * kNum);
  s.region[16] = 1;  // head 0 in flight, counter 0
  Backend b;
  check(b.attach(s, 3, err, &resubmitted, &resynced), "stale: recovery accepts it");
  check(resynced, "stale: the mismatch is reported as re-synchronised");
  check(resubmitted == 1 && s.descInflight(0) == 1, "stale: head 0 is kept and resubmitted");
  std::vector<uint16_t> got = b.pop(err, &ok);
  check(ok && got.size() >= 1 && got[0] == 0, "stale: head 0 delivered first");
}

void badRegions() {
  {
    Shared s;
    s.create();
    s.region[8] = 2;  // version 2
    Backend b;
    std::string err;
    unsigned r;
    bool rs;
    bool started = b.attach(s, 0, err, &r, &rs);
    check(!started && err.find("version 2") != std::string::npos, "version 2 is refused: " + err);
  }
  {
    Shared s;
    s.create();
    s.region[8] = 1;
    s.region[10] = 4;  // desc_num 4, queue_size 8
    Backend b;
    std::string err;
    unsigned r;
    bool rs;
    bool started = b.attach(s, 0, err, &r, &rs);
    check(!started && err.find("desc_num 4") != std::string::npos, "desc_num mismatch is refused: " + err);
  }
  {
    Shared s;
    s.create();
    InflightRegion region;
    std::string err;
    auto refused = [&](int fd, uint64_t size, uint64_t off, unsigned nq, unsigned qs, const char* word) {
      bool mapped = region.map(fd, size, off, nq, qs, 1, kNum, err);
      check(!mapped && err.find(word) != std::string::npos, std::string("refused: ") + err);
    };
    refused(dup(s.inflightFd), s.inflightBytes - 64, 0, 1, kNum, "mmap_size");
    refused(dup(s.inflightFd), s.inflightBytes, 100, 1, kNum, "not page aligned");
    refused(dup(s.inflightFd), s.inflightBytes, 4096, 1, kNum, "passes the file's end");
    refused(dup(s.inflightFd), s.inflightBytes, 0, 2, kNum, "num_queues");
    refused(dup(s.inflightFd), s.inflightBytes, 0, 1, 16, "queue_size");
    int unsealed = memfd_create("unsealed", 0);
    if (ftruncate(unsealed, static_cast<off_t>(s.inflightBytes)) != 0) std::abort();
    refused(unsealed, s.inflightBytes, 0, 1, kNum, "sealed");
  }
}

// A driver that makes a head available again before it was used.
void reusedHead() {
  Shared s;
  s.create();
  uint16_t dup0 = 0;
  memcpy(s.at(kAvail + 4 + 2 * 6), &dup0, 2);  // avail[6] = head 0 again
  uint16_t seven = 7;
  memcpy(s.at(kAvail + 2), &seven, 2);
  Backend b;
  std::string err;
  unsigned r;
  bool rs, ok;
  check(b.attach(s, 0, err, &r, &rs), "reuse: ring starts");
  b.pop(err, &ok);
  check(!ok && err.find("again while it is in flight") != std::string::npos, "reuse: refused as a violation: " + err);
}

// Counters keep increasing across a recovery: a new head is newer than
// every resubmitted one.
void countersContinue() {
  Shared s;
  s.create();
  Backend first;
  std::string err;
  unsigned r;
  bool rs, ok;
  first.attach(s, 0, err, &r, &rs);
  first.pop(err, &ok);
  Backend b;
  uint16_t used0 = 0;
  check(b.attach(s, used0, err, &r, &rs) && r == 6, "counters: six resubmitted");
  b.pop(err, &ok);
  // Complete head 2 and make it available again: its new counter follows 5.
  b.vq.addUsed(2, 0);
  b.vq.publish();
  uint16_t two = 2, seven = 7;
  memcpy(s.at(kAvail + 4 + 2 * 6), &two, 2);
  memcpy(s.at(kAvail + 2), &seven, 2);
  b.pop(err, &ok);
  uint64_t counter;
  memcpy(&counter, s.region + 16 + 16 * 2 + 8, 8);
  check(ok && counter == 6, "counters: the re-popped head gets counter 6, got " + std::to_string(counter));
}

// Hostile region contents (the frontend can write any byte of it): random
// used_idx, last_batch_head, next links, flags and counters, and a random
// used ring. Recovery must stay in bounds (ASan) and resubmit each head of
// the ring at most once.
void fuzzRecovery() {
  unsigned seed = 12345;
  auto rnd = [&seed]() {
    seed = seed * 1103515245u + 12345u;
    return seed >> 8;
  };
  Shared s;
  s.create();
  for (int iter = 0; iter < 3000; iter++) {
    for (uint64_t i = 16; i < s.inflightBytes; i++) s.region[i] = static_cast<uint8_t>(rnd() % 4 == 0 ? rnd() : 0);
    for (uint64_t i = 16; i < s.inflightBytes; i += 16) s.region[i] &= 1;  // mostly 0/1 flags
    uint16_t v = 1, n = kNum, lbh = static_cast<uint16_t>(rnd() % 10), ui = static_cast<uint16_t>(rnd());
    memcpy(s.region + 8, &v, 2);
    memcpy(s.region + 10, &n, 2);
    memcpy(s.region + 12, &lbh, 2);
    memcpy(s.region + 14, &ui, 2);
    for (unsigned i = 0; i < 4 + 8u * kNum; i++) s.at(kUsed)[i] = static_cast<uint8_t>(rnd() % 3 == 0 ? rnd() : rnd() % kNum);
    uint16_t usedIdx = static_cast<uint16_t>(ui + rnd() % 12);
    memcpy(s.at(kUsed + 2), &usedIdx, 2);
    Backend b;
    std::string err;
    unsigned r = 0;
    bool rs, ok;
    if (!b.attach(s, usedIdx, err, &r, &rs)) continue;
    if (r > kNum) check(false, "fuzz: more resubmits than ring entries");
    std::vector<uint16_t> got = b.pop(err, &ok);
    std::vector<int> seen(kNum, 0);
    for (unsigned i = 0; i < r && i < got.size(); i++) {
      if (got[i] >= kNum || seen[got[i]]++) check(false, "fuzz: a resubmitted head twice or out of range");
    }
  }
  check(true, "fuzz: 3000 hostile regions recovered within bounds");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && strcmp(argv[1], "child") == 0) child(argv[2]);
  const char* self = "/proc/self/exe";
  (void)argv;
  crashAndRecover(self, "pop-marked", {0}, {0, 1, 2, 3, 4, 5}, 0);
  crashAndRecover(self, "used-written", {0, 2, 3, 4, 5}, {0, 2, 3, 4, 5}, 1);
  crashAndRecover(self, "used-published", {2, 4, 5}, {2, 4, 5}, 3);
  crashAndRecover(self, "inflight-partly-cleared", {2, 4, 5}, {2, 4, 5}, 3);
  crashAndRecover(self, "inflight-cleared", {2, 4, 5}, {2, 4, 5}, 3);
  staleUsedIdx();
  badRegions();
  reusedHead();
  countersContinue();
  fuzzRecovery();
  std::printf("done\n");
  return 0;
}
