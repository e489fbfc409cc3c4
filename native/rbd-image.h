// An open RBD image (librados cluster handle, pool ioctx, librbd image) and
// the process-wide registry that lets a Session on any thread find it.
#pragma once

#include <rados/librados.h>
#include <rbd/librbd.h>

#include <cstdint>
#include <memory>
#include <string>

namespace vublk {

// librbd is thread-safe: Sessions on several data-plane threads share one
// handle. It is closed when the JS object and every Session let go of it.
struct RbdHandle {
  rados_t cluster = nullptr;
  rados_ioctx_t ioctx = nullptr;
  rbd_image_t image = nullptr;
  std::string spec;  // pool[/namespace]/image, for messages
  bool readOnly = false;
  ~RbdHandle();
};

// The image registered under token, or nullptr if none (or destroyed).
std::shared_ptr<RbdHandle> findSharedRbdImage(double token);

}  // namespace vublk
