// Kick, call and err notifiers: the eventfds a frontend hands over with
// SET_VRING_KICK/CALL/ERR, and an RAII owner for any fd received.
//
// The loop thread reads kick fds and writes call fds, so none of them may
// ever block it: every notifier is made non-blocking when received, a call
// that finds the counter full (EAGAIN) means an interrupt is already
// pending, and a kick fd that hangs up or reads short is reported broken
// rather than polled forever. Which fds are acceptable is src/'s decision
// (it asks fdTarget() what an fd is).
#pragma once

#include <unistd.h>

#include <string>

namespace vublk {

// Owns one fd from the moment it is received; closes it unless released.
class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

// Sets O_NONBLOCK on fd's open file description; 0 or -errno.
int setNonBlocking(int fd);

enum class KickState { kKicked, kSpurious, kBroken };
// Reads (and so resets) a kick eventfd. kSpurious on EAGAIN; kBroken with
// err set on EOF, a short read or an error.
KickState drainKick(int fd, std::string& err);

// Adds 1 to a call eventfd. A full counter (EAGAIN) already holds a pending
// interrupt, which is all a call has to guarantee.
void signalCall(int fd);

}  // namespace vublk
