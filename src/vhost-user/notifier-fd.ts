// Which fds a frontend may hand over as kick/call/err notifiers: eventfds
// only. The loop thread reads kick fds and writes call fds; a pipe, a file or
// a device there could block it (a full pipe) or keep it spinning (a pipe at
// EOF, /dev/null), and nothing but an eventfd is what the protocol means.

import { native } from '../native/binding';
import { violation } from './violation';

const EVENTFD = 'anon_inode:[eventfd]';

/** Throws a violation naming `request` unless fd is an eventfd. */
export function checkNotifierFd(request: string, fd: number): void {
  const target = native.fdTarget(fd);
  if (target !== EVENTFD) throw violation(`${request} fd is ${target || '(not open)'}, not an eventfd`);
}
