// The RbdImage JS class: connects to the cluster, opens the image, takes its
// exclusive lock; registered by token for the Sessions (see rbd-image.h).
#include "rbd-image.h"

#include <napi.h>

#include <cerrno>
#include <cstring>

#include "exports.h"
#include "token-registry.h"

namespace vublk {

namespace {

// How long connecting and each monitor operation may take: an unreachable
// cluster fails start-up instead of hanging it.
constexpr const char* kTimeoutSeconds = "10";

TokenRegistry<RbdHandle> registry;

[[noreturn]] void throwRbd(Napi::Env env, int rc, const std::string& what) {
  Napi::Error e = Napi::Error::New(env, what + ": " + strerror(-rc));
  e.Set("errno", Napi::Number::New(env, rc));
  throw e;
}

// The conf's mon_host, for a message about a cluster that cannot be reached.
std::string monHost(rados_t cluster) {
  char buf[512] = {};
  if (rados_conf_get(cluster, "mon_host", buf, sizeof buf - 1) < 0 || buf[0] == 0) return "(none configured)";
  return buf;
}

class RbdImage : public Napi::ObjectWrap<RbdImage> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "RbdImage",
                       {InstanceMethod<&RbdImage::Size>("size"),
                        InstanceMethod<&RbdImage::ObjectSize>("objectSize"),
                        InstanceMethod<&RbdImage::Features>("features"),
                        InstanceMethod<&RbdImage::AcquireExclusiveLock>("acquireExclusiveLock"),
                        InstanceMethod<&RbdImage::WatchUpdates>("watchUpdates"),
                        InstanceAccessor<&RbdImage::ReadOnly>("readOnly"),
                        InstanceAccessor<&RbdImage::Token>("token"),
                        InstanceMethod<&RbdImage::Destroy>("destroy")});
  }

  // new RbdImage(pool, namespace, image, confPath, id, readOnly[, snapshot]):
  // connects (blocking, bounded by kTimeoutSeconds) and opens the image, or
  // its snapshot (always read-only) when snapshot is not "".
  explicit RbdImage(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RbdImage>(info) {
    Napi::Env env = info.Env();
    for (size_t i = 0; i < 5; i++)
      if (!info[i].IsString())
        throw Napi::TypeError::New(env, "RbdImage(pool, namespace, image, confPath, id, readOnly[, snapshot])");
    std::string pool = info[0].As<Napi::String>(), ns = info[1].As<Napi::String>();
    std::string name = info[2].As<Napi::String>(), conf = info[3].As<Napi::String>();
    std::string id = info[4].As<Napi::String>();
    std::string snap = info[6].IsString() ? std::string(info[6].As<Napi::String>()) : std::string();
    auto h = std::make_shared<RbdHandle>();
    h->readOnly = info[5].ToBoolean() || !snap.empty();
    h->spec = pool + "/" + (ns.empty() ? "" : ns + "/") + name + (snap.empty() ? "" : "@" + snap);
    int rc = rados_create(&h->cluster, id.empty() ? nullptr : id.c_str());
    if (rc < 0) throwRbd(env, rc, "rados_create");
    rc = rados_conf_read_file(h->cluster, conf.empty() ? nullptr : conf.c_str());
    if (rc < 0) throwRbd(env, rc, "cannot read Ceph configuration " + (conf.empty() ? std::string("(default paths)") : conf));
    rados_conf_set(h->cluster, "client_mount_timeout", kTimeoutSeconds);
    rados_conf_set(h->cluster, "rados_mon_op_timeout", kTimeoutSeconds);
    // No librbd writeback cache (QEMU sets the same for cache.direct=on): a
    // write completes when the OSDs have it, as for O_DIRECT on a file, so a
    // crash of this process loses no acknowledged write.
    rados_conf_set(h->cluster, "rbd_cache", "false");
    rc = rados_connect(h->cluster);
    if (rc < 0)
      throwRbd(env, rc, "cannot connect to the Ceph cluster (monitors " + monHost(h->cluster) + ") as client." +
                            (id.empty() ? std::string("admin") : id));
    rc = rados_ioctx_create(h->cluster, pool.c_str(), &h->ioctx);
    if (rc < 0) throwRbd(env, rc, "cannot open pool " + pool);
    rados_ioctx_set_namespace(h->ioctx, ns.empty() ? nullptr : ns.c_str());
    const char* snapName = snap.empty() ? nullptr : snap.c_str();
    rc = h->readOnly ? rbd_open_read_only(h->ioctx, name.c_str(), &h->image, snapName)
                     : rbd_open(h->ioctx, name.c_str(), &h->image, nullptr);
    if (rc < 0) {
      h->image = nullptr;
      throwRbd(env, rc, "cannot open rbd image " + h->spec);
    }
    token_ = registry.add(h);
    h_ = std::move(h);
  }

  ~RbdImage() override { release(); }

 private:
  RbdHandle& live(Napi::Env env) {
    if (!h_) throw Napi::Error::New(env, "rbd image is destroyed");
    return *h_;
  }

  Napi::Value Size(const Napi::CallbackInfo& info) {
    uint64_t size = 0;
    int rc = rbd_get_size(live(info.Env()).image, &size);
    if (rc < 0) throwRbd(info.Env(), rc, "rbd_get_size " + h_->spec);
    return Napi::Number::New(info.Env(), static_cast<double>(size));
  }

  Napi::Value ObjectSize(const Napi::CallbackInfo& info) {
    rbd_image_info_t st{};
    int rc = rbd_stat(live(info.Env()).image, &st, sizeof st);
    if (rc < 0) throwRbd(info.Env(), rc, "rbd_stat " + h_->spec);
    return Napi::Number::New(info.Env(), static_cast<double>(st.obj_size));
  }

  Napi::Value Features(const Napi::CallbackInfo& info) {
    uint64_t f = 0;
    int rc = rbd_get_features(live(info.Env()).image, &f);
    if (rc < 0) throwRbd(info.Env(), rc, "rbd_get_features " + h_->spec);
    return Napi::Number::New(info.Env(), static_cast<double>(f));
  }

  // Takes the exclusive lock for good: a lock taken through rbd_lock_acquire
  // is not handed over when another client asks for it. Returns false when
  // the image has no exclusive-lock feature; throws if another client holds it.
  Napi::Value AcquireExclusiveLock(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    RbdHandle& h = live(env);
    uint64_t f = 0;
    int rc = rbd_get_features(h.image, &f);
    if (rc < 0) throwRbd(env, rc, "rbd_get_features " + h.spec);
    if (!(f & RBD_FEATURE_EXCLUSIVE_LOCK)) return Napi::Boolean::New(env, false);
    rc = rbd_lock_acquire(h.image, RBD_LOCK_MODE_EXCLUSIVE);
    if (rc == -EROFS || rc == -EBUSY)
      throwRbd(env, rc, "rbd image " + h.spec + " is locked by another client");
    if (rc < 0) throwRbd(env, rc, "cannot take the exclusive lock of rbd image " + h.spec);
    return Napi::Boolean::New(env, true);
  }

  // watchUpdates(fn): fn() on the JS thread after each change of the image's
  // header another client (or librbd) announces: a resize, a lock change, a
  // snapshot. Several changes may share one call. Never keeps the loop alive.
  Napi::Value WatchUpdates(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    RbdHandle& h = live(env);
    if (watching_) throw Napi::Error::New(env, "watchUpdates: already watching");
    if (!info[0].IsFunction()) throw Napi::TypeError::New(env, "watchUpdates(fn)");
    onUpdate_ = Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "rbd-update", 0, 1);
    onUpdate_.Unref(env);
    int rc = rbd_update_watch(h.image, &watchHandle_, &RbdImage::OnUpdate, this);
    if (rc < 0) {
      onUpdate_.Release();
      throwRbd(env, rc, "rbd_update_watch " + h.spec);
    }
    watching_ = true;
    return env.Undefined();
  }

  // On a librbd thread.
  static void OnUpdate(void* arg) { static_cast<RbdImage*>(arg)->onUpdate_.NonBlockingCall(); }

  Napi::Value ReadOnly(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), live(info.Env()).readOnly);
  }

  Napi::Value Token(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), token_); }

  // Unregisters the token; Sessions that hold the image keep it open until
  // they are destroyed. Idempotent.
  Napi::Value Destroy(const Napi::CallbackInfo& info) {
    release();
    return info.Env().Undefined();
  }

  void release() {
    if (!h_) return;
    registry.remove(token_);
    if (watching_) {
      // Returns once no callback runs any more: OnUpdate never sees a released function.
      rbd_update_unwatch(h_->image, watchHandle_);
      onUpdate_.Release();
      watching_ = false;
    }
    h_.reset();
  }

  std::shared_ptr<RbdHandle> h_;
  uint32_t token_ = 0;
  Napi::ThreadSafeFunction onUpdate_;
  uint64_t watchHandle_ = 0;
  bool watching_ = false;
};

}  // namespace

RbdHandle::~RbdHandle() {
  if (image) rbd_close(image);
  if (ioctx) rados_ioctx_destroy(ioctx);
  if (cluster) rados_shutdown(cluster);
}

std::shared_ptr<RbdHandle> findSharedRbdImage(double token) { return registry.find(token); }

void InitRbdImage(Napi::Env env, Napi::Object exports) { exports.Set("RbdImage", RbdImage::Define(env)); }

}  // namespace vublk
