// Unit test of native/uring.cc (built and run by uring-unit.test.ts, under
// ASan + UBSan). Prints one "ok <name>" line per check that passes and exits
// 1 at the first that fails.
//
// 1. A failed io_uring_submit: the ring's fd is swapped for /dev/null, so
//    io_uring_enter fails (EOPNOTSUPP) with a write prepared. The iovec that
//    write points at is then rewritten, as the next batch rewrites native's
//    iovec scratch, and a second write is submitted on the restored ring.
//    The first write must never reach the disk (the kernel must not see it
//    with the new iovec) and never complete; dropped() must name it.
// 2. inflight() counts what the kernel holds, and cancelAll() cancels an op
//    that is waiting (a read of an empty pipe).
#include <fcntl.h>
#include <poll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../native/uring.h"

using vublk::Uring;

namespace {

void check(bool ok, const char* name) {
  if (!ok) {
    std::printf("FAIL %s\n", name);
    std::exit(1);
  }
  std::printf("ok %s\n", name);
}

// Reaps until `until` returns true or 5 s pass; appends (userData, res).
template <typename F>
void reapUntil(Uring& u, std::vector<std::pair<uint64_t, int>>& got, F until) {
  for (int i = 0; i < 500 && !until(); i++) {
    pollfd p{u.eventFd(), POLLIN, 0};
    poll(&p, 1, 10);
    u.ackEvent();
    double out[32];
    unsigned n = u.reap(out, 16);
    for (unsigned k = 0; k < n; k++)
      got.emplace_back(static_cast<uint64_t>(out[2 * k]), static_cast<int>(out[2 * k + 1]));
  }
}

bool seen(const std::vector<std::pair<uint64_t, int>>& got, uint64_t ud) {
  for (auto& c : got)
    if (c.first == ud) return true;
  return false;
}

}  // namespace

int main() {
  char path[] = "/tmp/vublk-uring-unit-XXXXXX";
  int fd = mkstemp(path);
  check(fd >= 0, "temp file");
  unlink(path);
  std::vector<char> a(8192, 'A');
  check(pwrite(fd, a.data(), a.size(), 0) == 8192, "fill file");

  Uring u;
  check(u.init(8) == 0, "init");

  // --- 1. failed submit ---
  static char scratch[4096];
  std::memset(scratch, 'B', sizeof scratch);
  iovec iov{scratch, sizeof scratch};
  check(u.prepWritev(fd, &iov, 1, 0, 1, false), "prep first write");
  int saved = dup(u.ringFd());
  int null = open("/dev/null", O_RDWR);
  check(saved >= 0 && null >= 0, "dup ring fd");
  dup2(null, u.ringFd());
  int rc = u.submit();
  std::printf("# submit on a broken ring: %d (%s), dropped %u\n", rc, std::strerror(-rc), u.dropped());
  check(rc < 0, "submit fails");
  check(u.dropped() == 1, "the unconsumed write is reported dropped");
  check(u.inflight() == 0, "nothing in flight after the failure");
  dup2(saved, u.ringFd());
  close(saved);
  close(null);

  // The next batch rewrites the scratch the dropped SQE pointed at.
  std::memset(scratch, 'C', sizeof scratch);
  static char second[4096];
  std::memset(second, 'D', sizeof second);
  iovec iov2{second, sizeof second};
  check(u.prepWritev(fd, &iov2, 1, 4096, 2, false), "prep second write");
  check(u.submit() == 0, "second submit succeeds");
  std::vector<std::pair<uint64_t, int>> got;
  reapUntil(u, got, [&] { return seen(got, 2) && u.inflight() == 0; });
  check(seen(got, 2), "second write completes");
  check(u.inflight() == 0, "no-op and write both reaped");
  check(!seen(got, 1), "the dropped write never completes");
  std::vector<char> back(8192);
  check(pread(fd, back.data(), back.size(), 0) == 8192, "read back");
  check(std::memcmp(back.data(), a.data(), 4096) == 0, "the dropped write never reached the file");
  check(std::memcmp(back.data() + 4096, second, 4096) == 0, "the second write did");

  // --- 2. in-flight count and cancel ---
  int pipefd[2];
  check(pipe(pipefd) == 0, "pipe");
  static char pbuf[16];
  iovec piov{pbuf, sizeof pbuf};
  check(u.prepReadv(pipefd[0], &piov, 1, 0, 3), "prep pipe read");
  check(u.submit() == 0, "submit pipe read");
  check(u.inflight() == 1, "the waiting read is in flight");
  check(u.cancelAll() == 0, "cancelAll submits");
  got.clear();
  reapUntil(u, got, [&] { return u.inflight() == 0; });
  check(u.inflight() == 0, "nothing in flight after cancel");
  check(got.size() == 1 && got[0].first == 3 && got[0].second == -ECANCELED,
        "the read completes as cancelled, the cancel request itself is not reported");
  close(pipefd[0]);
  close(pipefd[1]);
  u.close();
  close(fd);
  std::printf("done\n");
  return 0;
}
