// Host I/O errors that reached the guest as an error status. Storage
// operators need to see these, but a failing disk must not flood the log:
// the first ten per connection, then every thousandth.

import { constants as osConstants } from 'node:os';
import { log } from '../log';

export class HostErrorLog {
  private count = 0;

  /** broken(): the connection broke, and its leftover ops fail by design (the violation line said why). */
  constructor(
    private readonly conn: number,
    private readonly broken: () => boolean,
  ) {}

  report(res: number, type: number, offset: number): void {
    if (this.broken()) return;
    this.count++;
    if (this.count > 10 && this.count % 1000 !== 0) return;
    log.warn('host I/O error', { conn: this.conn, error: errnoName(-res), requestType: type, offset, count: this.count });
  }
}

function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(osConstants.errno)) if (value === errno) return name;
  return `errno ${errno}`;
}
