// Fuzzes the descriptor walker (SplitVirtqueue::pop) and the guest memory
// translation with hostile rings. Built with ASan+UBSan by
// test/native/vring-fuzz.test.ts; any out-of-bounds access aborts the run.
//
// Two ways in:
//  - libFuzzer (clang -fsanitize=fuzzer): LLVMFuzzerTestOneInput.
//  - plain main(): N iterations of a seeded generator that builds mostly
//    valid rings and then corrupts them (indices, lengths, flags, addresses
//    at and across region edges, loops, nested indirect tables).
//
// Invariants checked after every pop: every segment lies inside its region,
// header bytes copied <= 16, segment counts within the batch, and a chain
// is either fully delivered or not at all.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../guest-memory.h"
#include "../split-virtqueue.h"
#include "../unique-fd.h"

using namespace vublk;

namespace {

constexpr uint64_t kRegionSize = 64 * 1024;
constexpr uint64_t kGpa0 = 0x100000;  // region 0; region 1 follows it directly
constexpr uint64_t kUva0 = 0x7f0000000000ull;

struct Guest {
  GuestMemory mem;
  uint8_t* host[2];
  UniqueFd fds[2];

  Guest() {
    for (int i = 0; i < 2; i++) {
      fds[i].reset(memfd_create("fuzz", 0));
      if (!fds[i].valid() || ftruncate(fds[i].get(), kRegionSize) != 0) abort();
      host[i] = static_cast<uint8_t*>(
          mmap(nullptr, kRegionSize, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i].get(), 0));
      if (host[i] == MAP_FAILED) abort();
      std::string err;
      int dupfd = dup(fds[i].get());
      if (mem.add(dupfd, kGpa0 + i * kRegionSize, kRegionSize, kUva0 + i * kRegionSize, 0, err) < 0) {
        fprintf(stderr, "add: %s\n", err.c_str());
        abort();
      }
    }
  }
  ~Guest() {
    for (int i = 0; i < 2; i++) munmap(host[i], kRegionSize);  // fds close after this
  }
  // Writes to guest-physical memory in region 0 or 1 (our own view).
  uint8_t* at(uint64_t gpa) {
    uint64_t off = gpa - kGpa0;
    return host[off / kRegionSize] + off % kRegionSize;
  }
};

void check(bool cond, const char* what) {
  if (!cond) {
    fprintf(stderr, "invariant broken: %s\n", what);
    abort();
  }
}

// Runs one pop over the current guest memory and checks its output.
void popAndCheck(Guest& g, SplitVirtqueue& vq, bool eventIdx) {
  static double chains[64 * kChainStride];
  static uint8_t headers[64 * kHeaderBytes];
  static std::vector<double> segs(4 * kMaxChainSegs * kSegStride);
  vq.setEventIdx(eventIdx);
  for (int round = 0; round < 4; round++) {
    PopBatch b{chains, headers, segs.data(), 64, static_cast<unsigned>(segs.size() / kSegStride)};
    std::string err;
    bool ok = vq.pop(g.mem, b, err);
    check(b.nChains <= 64, "chain count within batch");
    check(b.nSegs <= segs.size() / kSegStride, "segment count within batch");
    unsigned expectSeg = 0;
    for (unsigned c = 0; c < b.nChains; c++) {
      double* ch = chains + c * kChainStride;
      check(ch[0] >= 0 && ch[0] < vq.num(), "head in range");
      check(ch[1] == expectSeg, "chains are contiguous in segs");
      check(ch[3] >= 0 && ch[3] <= kHeaderBytes, "header copy <= 16");
      for (unsigned s = 0; s < ch[2]; s++) {
        double* sg = segs.data() + (static_cast<size_t>(ch[1]) + s) * kSegStride;
        uint8_t* p = g.mem.bufPtr(static_cast<uint32_t>(sg[0]), static_cast<uint64_t>(sg[1]),
                                  static_cast<uint64_t>(sg[2]));
        check(p != nullptr, "segment inside its region");
        check(sg[2] > 0, "no empty segments");
        // Touch both ends: ASan catches a bad translation here.
        volatile uint8_t x = p[0];
        x = p[static_cast<size_t>(sg[2]) - 1];
        (void)x;
      }
      expectSeg += static_cast<unsigned>(ch[2]);
    }
    check(expectSeg == b.nSegs, "segments all belong to chains");
    if (!ok) {
      check(!err.empty(), "a violation names its rule");
      return;
    }
    if (b.nChains == 0) return;
  }
}

// Lays out a ring in region 0 and random chains, then corrupts some of it.
void generate(std::mt19937_64& rng, Guest& g, SplitVirtqueue& vq) {
  auto r = [&](uint64_t n) { return n ? rng() % n : 0; };
  uint16_t num = static_cast<uint16_t>(1u << r(9));  // 1..256
  uint64_t desc = kGpa0, avail = kGpa0 + 16ull * num, used = avail + 6 + 2ull * num + 8;
  used = (used + 3) & ~3ull;
  memset(g.host[0], 0, kRegionSize);
  memset(g.host[1], 0, kRegionSize);
  vq.setNum(num);
  vq.setAddr(kUva0 + (desc - kGpa0), kUva0 + (used - kGpa0), kUva0 + (avail - kGpa0));
  vq.setBase(static_cast<uint16_t>(r(3) == 0 ? rng() : 0));
  vq.setIndirect(r(4) != 0);
  std::string err;
  if (!vq.map(g.mem, err)) abort();

  uint64_t dataLo = (used + 6 + 8ull * num + 64) & ~15ull;
  uint64_t memEnd = kGpa0 + 2 * kRegionSize;
  auto randAddr = [&]() -> uint64_t {
    switch (r(8)) {
      case 0: return rng();                                   // anywhere
      case 1: return kGpa0 + kRegionSize - r(64);             // straddles the region edge
      case 2: return memEnd - r(64);                          // runs off the end
      default: return dataLo + r(memEnd - dataLo);
    }
  };
  auto randLen = [&]() -> uint32_t {
    switch (r(6)) {
      case 0: return static_cast<uint32_t>(rng());
      case 1: return 0;
      case 2: return 16;
      default: return static_cast<uint32_t>(1 + r(8192));
    }
  };
  auto writeDesc = [&](uint64_t tableGpa, unsigned i, uint64_t addr, uint32_t len, uint16_t flags,
                       uint16_t next) {
    uint8_t* d = g.at(tableGpa + 16ull * i);
    memcpy(d, &addr, 8);
    memcpy(d + 8, &len, 4);
    memcpy(d + 12, &flags, 2);
    memcpy(d + 14, &next, 2);
  };

  uint16_t base = vq.lastAvail();
  unsigned chains = static_cast<unsigned>(r(num + 1));
  unsigned nextFree = 0;
  for (unsigned c = 0; c < chains && nextFree < num; c++) {
    unsigned head = nextFree;
    unsigned len = 1 + static_cast<unsigned>(r(6));
    bool indirect = r(4) == 0;
    if (indirect) {
      unsigned n = 1 + static_cast<unsigned>(r(8));
      uint64_t table = dataLo + 16 * r((memEnd - dataLo - 16 * n) / 16);
      if (r(5) == 0) table = kGpa0 + kRegionSize - 16 * r(n + 1);  // spans regions
      for (unsigned i = 0; i < n; i++) {
        uint16_t flags = static_cast<uint16_t>((i + 1 < n ? 1 : 0) | (i * 2 >= n ? 2 : 0));
        if (r(10) == 0) flags = static_cast<uint16_t>(rng());
        writeDesc(table, i, randAddr(), randLen(), flags,
                  static_cast<uint16_t>(r(5) == 0 ? rng() : i + 1));
      }
      writeDesc(desc, head, table, r(6) == 0 ? randLen() : 16 * n,
                static_cast<uint16_t>(r(8) == 0 ? 5 : 4), 0);
      nextFree++;
    } else {
      for (unsigned i = 0; i < len && nextFree < num; i++, nextFree++) {
        bool last = i + 1 == len || nextFree + 1 == num;
        uint16_t flags = static_cast<uint16_t>((last ? 0 : 1) | (i * 2 >= len ? 2 : 0));
        if (r(10) == 0) flags = static_cast<uint16_t>(rng());
        uint16_t next = static_cast<uint16_t>(r(6) == 0 ? r(num + 2) : nextFree + 1);
        writeDesc(desc, nextFree, randAddr(), randLen(), flags, next);
      }
    }
    uint16_t slot = static_cast<uint16_t>((base + c) % num);
    uint16_t h = static_cast<uint16_t>(r(12) == 0 ? rng() : head);
    memcpy(g.at(avail + 4 + 2ull * slot), &h, 2);
  }
  uint16_t idx = static_cast<uint16_t>(base + chains);
  if (r(10) == 0) idx = static_cast<uint16_t>(rng());
  memcpy(g.at(avail + 2), &idx, 2);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Guest* g = new Guest();
  if (size < 8) return 0;
  uint64_t seed;
  memcpy(&seed, data, 8);
  std::mt19937_64 rng(seed);
  SplitVirtqueue vq;
  generate(rng, *g, vq);
  // Overlay the remaining input bytes on the rings and data: raw hostility.
  size_t n = size - 8 < kRegionSize ? size - 8 : kRegionSize;
  for (size_t i = 0; i < n; i++) g->host[0][i] ^= data[8 + i];
  popAndCheck(*g, vq, seed & 1);
  return 0;
}

#ifndef VUBLK_LIBFUZZER
int main(int argc, char** argv) {
  unsigned long iterations = argc > 1 ? strtoul(argv[1], nullptr, 10) : 20000;
  uint64_t seed0 = argc > 2 ? strtoull(argv[2], nullptr, 10) : 1;
  Guest g;
  unsigned long violations = 0, chains = 0;
  for (unsigned long it = 0; it < iterations; it++) {
    std::mt19937_64 rng(seed0 * 1000003 + it);
    SplitVirtqueue vq;
    generate(rng, g, vq);
    popAndCheck(g, vq, it & 1);
    // Count outcomes so the harness can show it reached both sides.
    double c[64 * kChainStride];
    uint8_t h[64 * kHeaderBytes];
    std::vector<double> s(4 * kMaxChainSegs * kSegStride);
    SplitVirtqueue again;
    std::mt19937_64 rng2(seed0 * 1000003 + it);
    generate(rng2, g, again);
    PopBatch b{c, h, s.data(), 64, static_cast<unsigned>(s.size() / kSegStride)};
    std::string err;
    if (!again.pop(g.mem, b, err)) violations++;
    chains += b.nChains;
  }
  printf("iterations=%lu chains=%lu violations=%lu\n", iterations, chains, violations);
  return 0;
}
#endif
