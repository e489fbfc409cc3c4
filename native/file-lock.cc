// Open file description (OFD) byte-range locks, the kind QEMU's file-posix
// driver takes on an image: they belong to the open file, not the process,
// and go away when its last fd closes. src/disk/image-lock.ts decides which
// bytes; this only calls fcntl.
#include <fcntl.h>

#include "errno-error.h"
#include "exports.h"

namespace vublk {

namespace {

// Lock types as JS passes them.
constexpr int kUnlock = 0;
constexpr int kRead = 1;
constexpr int kWrite = 2;

short lockType(Napi::Env env, int64_t t) {
  if (t == kUnlock) return F_UNLCK;
  if (t == kRead) return F_RDLCK;
  if (t == kWrite) return F_WRLCK;
  throw Napi::RangeError::New(env, "lock type must be 0 (unlock), 1 (read) or 2 (write)");
}

struct flock rangeOf(const Napi::CallbackInfo& info, short type) {
  struct flock fl {};
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(argU64(info, 1));
  fl.l_len = static_cast<off_t>(argU64(info, 2));
  fl.l_type = type;
  // l_pid must be 0 for OFD locks (fcntl(2)).
  fl.l_pid = 0;
  return fl;
}

// ofdLock(fd, start, len, type): F_OFD_SETLK, never waits; throws
// {code: 'EAGAIN'} when another open file holds a conflicting lock.
Napi::Value OfdLock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(argInt(info, 0));
  struct flock fl = rangeOf(info, lockType(env, argInt(info, 3)));
  if (fcntl(fd, F_OFD_SETLK, &fl) != 0) throwErrno(env, errno, "fcntl(F_OFD_SETLK)");
  return env.Undefined();
}

// ofdConflicts(fd, start, len, type): F_OFD_GETLK; true when another open
// file holds a lock that would conflict with one of `type` (our own never do).
Napi::Value OfdConflicts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(argInt(info, 0));
  struct flock fl = rangeOf(info, lockType(env, argInt(info, 3)));
  if (fl.l_type == F_UNLCK) throw Napi::RangeError::New(env, "ofdConflicts: test a read or write lock");
  if (fcntl(fd, F_OFD_GETLK, &fl) != 0) throwErrno(env, errno, "fcntl(F_OFD_GETLK)");
  return Napi::Boolean::New(env, fl.l_type != F_UNLCK);
}

}  // namespace

void InitFileLock(Napi::Env env, Napi::Object exports) {
  exports.Set("ofdLock", Napi::Function::New(env, OfdLock));
  exports.Set("ofdConflicts", Napi::Function::New(env, OfdConflicts));
}

}  // namespace vublk
