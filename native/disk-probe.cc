// Facts about the host disk's direct-I/O rules, for src/disk/ to decide on:
// statx(STATX_DIOALIGN) where the kernel gives it, the block device's sector
// sizes by ioctl, and a trial O_DIRECT read as the last resort.
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/stat.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "errno-error.h"
#include "exports.h"

namespace vublk {

namespace {

// probeDisk(fd) -> {dioMemAlign, dioOffsetAlign, logicalBlock, physicalBlock,
//                   ioMin, ioOpt, blockDevice, sizeBytes}; 0 where unknown.
Napi::Value ProbeDisk(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(argInt(info, 0));
  Napi::Object r = Napi::Object::New(env);
  struct statx stx {};
  // glibc 2.36's struct statx predates the DIOALIGN fields: use the kernel's.
  long rc = syscall(SYS_statx, fd, "", AT_EMPTY_PATH, STATX_DIOALIGN | STATX_TYPE | STATX_SIZE, &stx);
  if (rc != 0) throwErrno(env, errno, "statx");
  bool dio = stx.stx_mask & STATX_DIOALIGN;
  r.Set("dioMemAlign", dio ? stx.stx_dio_mem_align : 0);
  r.Set("dioOffsetAlign", dio ? stx.stx_dio_offset_align : 0);
  bool blk = (stx.stx_mode & S_IFMT) == S_IFBLK;
  r.Set("blockDevice", blk);
  int logical = 0;
  unsigned physical = 0, ioMin = 0, ioOpt = 0;
  uint64_t size = stx.stx_size;
  if (blk) {
    if (ioctl(fd, BLKSSZGET, &logical) != 0) logical = 0;
    if (ioctl(fd, BLKPBSZGET, &physical) != 0) physical = 0;
    if (ioctl(fd, BLKIOMIN, &ioMin) != 0) ioMin = 0;
    if (ioctl(fd, BLKIOOPT, &ioOpt) != 0) ioOpt = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) throwErrno(env, errno, "ioctl(BLKGETSIZE64)");
  }
  r.Set("logicalBlock", logical);
  r.Set("physicalBlock", physical);
  r.Set("ioMin", ioMin);
  r.Set("ioOpt", ioOpt);
  r.Set("sizeBytes", static_cast<double>(size));
  return r;
}

// trialRead(fd, length, offset, memOffset) -> 0 if an O_DIRECT pread of
// length bytes at offset, into a buffer memOffset bytes past a 64 KiB
// boundary, works; else -errno. The fd must be open O_DIRECT.
Napi::Value TrialRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(argInt(info, 0));
  uint64_t len = argU64(info, 1), off = argU64(info, 2), memOff = argU64(info, 3);
  constexpr uint64_t kMax = 1 << 20;
  if (len == 0 || len > kMax || memOff > kMax) throw Napi::RangeError::New(env, "trialRead: bad size");
  void* buf = nullptr;
  if (posix_memalign(&buf, 65536, len + memOff) != 0) throwErrno(env, ENOMEM, "posix_memalign");
  ssize_t n;
  do {
    n = pread(fd, static_cast<char*>(buf) + memOff, len, static_cast<off_t>(off));
  } while (n < 0 && errno == EINTR);
  int e = errno;
  free(buf);
  return Napi::Number::New(env, n < 0 ? -e : 0);
}

// trialReadv(fd, segLen, count) -> 0 if an O_DIRECT preadv at offset 0 of
// `count` segments of segLen bytes each (each in its own 64 KiB-aligned
// buffer) works; else -errno. Finds whether segment lengths need only the
// memory alignment (newer kernels) or the offset alignment (Linux 6.1 block
// devices check every segment's length against the logical block size).
Napi::Value TrialReadv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(argInt(info, 0));
  uint64_t segLen = argU64(info, 1), count = argU64(info, 2);
  constexpr uint64_t kSlot = 65536;
  if (segLen == 0 || segLen > kSlot || count == 0 || count > 128)
    throw Napi::RangeError::New(env, "trialReadv: bad size");
  void* buf = nullptr;
  if (posix_memalign(&buf, kSlot, kSlot * count) != 0) throwErrno(env, ENOMEM, "posix_memalign");
  iovec iov[128];
  for (uint64_t i = 0; i < count; i++) iov[i] = iovec{static_cast<char*>(buf) + i * kSlot, segLen};
  ssize_t n;
  do {
    n = preadv(fd, iov, static_cast<int>(count), 0);
  } while (n < 0 && errno == EINTR);
  int e = errno;
  free(buf);
  return Napi::Number::New(env, n < 0 ? -e : 0);
}

// fallocate(fd, mode, offset, length) -> 0 or -errno (probing only: the
// data path uses io_uring).
Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  int fd = static_cast<int>(argInt(info, 0));
  int mode = static_cast<int>(argInt(info, 1));
  uint64_t off = argU64(info, 2), len = argU64(info, 3);
  int rc = fallocate(fd, mode, static_cast<off_t>(off), static_cast<off_t>(len));
  return Napi::Number::New(info.Env(), rc == 0 ? 0 : -errno);
}

}  // namespace

void InitDiskProbe(Napi::Env env, Napi::Object exports) {
  exports.Set("probeDisk", Napi::Function::New(env, ProbeDisk));
  exports.Set("trialRead", Napi::Function::New(env, TrialRead));
  exports.Set("trialReadv", Napi::Function::New(env, TrialReadv));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate));
}

}  // namespace vublk
