// memfd, eventfd and shared mappings: what an in-process frontend needs to
// give vublk guest memory and notifiers (tests, benchmarks), and later the
// inflight region.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "errno-error.h"
#include "exports.h"
#include "inflight.h"
#include "unique-fd.h"

namespace vublk {

namespace {

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>();
  uint64_t size = argU64(info, 1);
  UniqueFd fd(memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) throwErrno(env, errno, "memfd_create");
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) throwErrno(env, errno, "ftruncate");
  return Napi::Number::New(env, fd.release());
}

constexpr uint64_t kMaxMapBytes = 1ull << 32;

Napi::Value MapShared(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(argInt(info, 0));
  uint64_t size = argU64(info, 1);
  uint64_t offset = argU64(info, 2);
  if (size == 0) throw Napi::RangeError::New(env, "mapShared: size 0");
  // V8 refuses an external ArrayBuffer over 4 GiB, and Node then runs the
  // finalizer that node-addon-api frees again (a double free): refuse first.
  if (size > kMaxMapBytes) throw Napi::RangeError::New(env, "mapShared: at most 4 GiB per mapping");
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) throwErrno(env, errno, "mmap");
  size_t len = size;
  return Napi::ArrayBuffer::New(
      env, p, len, [](Napi::Env, void* data, size_t* hint) {
        munmap(data, *hint);
        delete hint;
      },
      new size_t(len));
}

// inflightCreate(numQueues, queueSize) -> {fd, mmapSize}: GET_INFLIGHT_FD's region.
Napi::Value InflightCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t numQueues = argInt(info, 0), queueSize = argInt(info, 1);
  if (numQueues < 1 || numQueues > 0xffff || queueSize < 1 || queueSize > 0xffff)
    throw Napi::RangeError::New(env, "inflightCreate: numQueues and queueSize must be in 1..65535");
  uint64_t size = 0;
  int fd = createInflightFd(static_cast<unsigned>(numQueues), static_cast<unsigned>(queueSize), &size);
  if (fd < 0) throwErrno(env, -fd, "memfd_create");
  Napi::Object o = Napi::Object::New(env);
  o.Set("fd", fd);
  o.Set("mmapSize", static_cast<double>(size));
  return o;
}

// eventfdCreate(blocking = false): tests need a blocking one to play a
// frontend that hands vublk an fd whose writes would block.
Napi::Value EventfdCreate(const Napi::CallbackInfo& info) {
  bool blocking = info.Length() > 0 && info[0].ToBoolean();
  int fd = eventfd(0, (blocking ? 0 : EFD_NONBLOCK) | EFD_CLOEXEC);
  if (fd < 0) throwErrno(info.Env(), errno, "eventfd");
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  int fd = static_cast<int>(argInt(info, 0));
  uint64_t v = 0;
  ssize_t n;
  do {
    n = read(fd, &v, sizeof v);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Napi::Number::New(info.Env(), 0);
    throwErrno(info.Env(), errno, "read");
  }
  return Napi::Number::New(info.Env(), static_cast<double>(v));
}

Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  int fd = static_cast<int>(argInt(info, 0));
  uint64_t v = argU64(info, 1);
  ssize_t n;
  do {
    n = write(fd, &v, sizeof v);
  } while (n < 0 && errno == EINTR);
  if (n < 0) throwErrno(info.Env(), errno, "write");
  return info.Env().Undefined();
}

}  // namespace

void InitMemfd(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate));
  exports.Set("mapShared", Napi::Function::New(env, MapShared));
  exports.Set("inflightCreate", Napi::Function::New(env, InflightCreate));
  exports.Set("eventfdCreate", Napi::Function::New(env, EventfdCreate));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite));
}

}  // namespace vublk
