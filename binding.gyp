{
  "targets": [
    {
      "target_name": "vublk_native",
      "sources": [
        "native/addon.cc",
        "native/unix-socket.cc",
        "native/fd-watcher.cc",
        "native/memfd.cc",
        "native/guest-memory.cc",
        "native/shared-guest-memory.cc",
        "native/guest-access.cc",
        "native/split-virtqueue.cc",
        "native/uring.cc",
        "native/buffer-table.cc",
        "native/disk-queue.cc",
        "native/session.cc",
        "native/session-rings.cc",
        "native/session-poll.cc",
        "native/disk-probe.cc",
        "native/notifier-fd.cc",
        "native/inflight.cc",
        "native/crash-point.cc",
        "native/sd-notify.cc",
        "native/exit-deadline.cc",
        "native/file-lock.cc",
        "native/rbd-image.cc",
        "native/rbd-queue.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "<@(extra_cflags)"],
      "ldflags": ["<@(extra_ldflags)"],
      "libraries": ["-l:liburing.a", "-lrbd", "-lrados"]
    }
  ],
  "variables": {
    "extra_cflags%": [],
    "extra_ldflags%": []
  }
}
