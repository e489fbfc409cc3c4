// The GuestMemory JS class and the process-wide registry of shared guest
// memory tables (see shared-guest-memory.h).
#include "shared-guest-memory.h"

#include <string>
#include <utility>

#include "errno-error.h"
#include "exports.h"
#include "token-registry.h"
#include "unique-fd.h"

namespace vublk {

namespace {

TokenRegistry<GuestMemory> registry;

class SharedGuestMemory : public Napi::ObjectWrap<SharedGuestMemory> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "GuestMemory",
                       {InstanceMethod<&SharedGuestMemory::AddRegion>("addRegion"),
                        InstanceMethod<&SharedGuestMemory::RemoveRegion>("removeRegion"),
                        InstanceMethod<&SharedGuestMemory::ClearRegions>("clearRegions"),
                        InstanceMethod<&SharedGuestMemory::RegionBytes>("regionBytes"),
                        InstanceMethod<&SharedGuestMemory::Regions>("regions"),
                        InstanceAccessor<&SharedGuestMemory::Token>("token"),
                        InstanceMethod<&SharedGuestMemory::Destroy>("destroy")});
  }

  explicit SharedGuestMemory(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<SharedGuestMemory>(info), mem_(std::make_shared<GuestMemory>()) {
    token_ = registry.add(mem_);
  }

  ~SharedGuestMemory() override { release(); }

 private:
  GuestMemory& live(Napi::Env env) {
    if (!mem_) throw Napi::Error::New(env, "guest memory is destroyed");
    return *mem_;
  }

  // addRegion(fd, gpa, size, uva, mmapOffset): the fd is always closed.
  Napi::Value AddRegion(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    UniqueFd fd(static_cast<int>(argInt(info, 0)));
    return addGuestRegion(info, std::move(fd), live(env));
  }

  Napi::Value RemoveRegion(const Napi::CallbackInfo& info) {
    bool ok = mem_ && mem_->remove(argU64(info, 0), argU64(info, 1));
    return Napi::Boolean::New(info.Env(), ok);
  }

  Napi::Value ClearRegions(const Napi::CallbackInfo& info) {
    if (mem_) mem_->clear();
    return info.Env().Undefined();
  }

  Napi::Value RegionBytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), mem_ ? static_cast<double>(mem_->totalBytes()) : 0);
  }

  Napi::Value Regions(const Napi::CallbackInfo& info) {
    if (!mem_) return Napi::Array::New(info.Env());
    return describeRegions(info.Env(), *mem_);
  }

  Napi::Value Token(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), token_); }

  // Unregisters the token and lets go of the maps; a Session that holds
  // them keeps them until it is destroyed. Idempotent.
  Napi::Value Destroy(const Napi::CallbackInfo& info) {
    release();
    return info.Env().Undefined();
  }

  void release() {
    if (!mem_) return;
    registry.remove(token_);
    mem_.reset();
  }

  std::shared_ptr<GuestMemory> mem_;
  uint32_t token_ = 0;
};

}  // namespace

Napi::Value addGuestRegion(const Napi::CallbackInfo& info, UniqueFd fd, GuestMemory& mem) {
  uint64_t gpa = argU64(info, 1), size = argU64(info, 2), uva = argU64(info, 3);
  uint64_t off = argU64(info, 4);
  std::string err;
  int id = mem.add(fd.release(), gpa, size, uva, off, err);  // closes it, mapped or not
  if (id < 0) throw Napi::Error::New(info.Env(), err);
  return Napi::Number::New(info.Env(), id);
}

std::shared_ptr<GuestMemory> findSharedGuestMemory(double token) { return registry.find(token); }

Napi::Array describeRegions(Napi::Env env, const GuestMemory& mem) {
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  for (uint32_t i = 0; i < GuestMemory::kMaxRegions; i++) {
    const Region* r = mem.region(i);
    if (!r) continue;
    Napi::Object o = Napi::Object::New(env);
    o.Set("bufId", i);
    o.Set("mmapOffset", static_cast<double>(r->mmapOffset));
    out.Set(n++, o);
  }
  return out;
}

void InitSharedGuestMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("GuestMemory", SharedGuestMemory::Define(env));
}

}  // namespace vublk
