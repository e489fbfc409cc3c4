// Kick, call and err notifiers: the eventfds a frontend hands over with
// SET_VRING_KICK/CALL/ERR (each held in a UniqueFd, unique-fd.h).
//
// The loop thread reads kick fds and writes call fds, so none of them may
// ever block it: every notifier is made non-blocking when received, a call
// that finds the counter full (EAGAIN) means an interrupt is already
// pending, and a kick fd that hangs up or reads short is reported broken
// rather than polled forever. Which fds are acceptable is src/'s decision
// (it asks fdTarget() what an fd is).
#pragma once

#include <string>

#include "unique-fd.h"

namespace vublk {

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
