// The guest memory messages (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG): decode,
// quiesce the data plane, change its regions, register them again, resume.

import type { VhostUserDataPlane } from './backend';
import { type Message, type MemRegionWithFd, decodeAddMemReg, decodeMemTable, decodeRemMemReg } from './message';
import { closeAll, describe } from './message-loop';
import { violation } from './violation';

/** The connection's quiesce: the plane's, ending the handler if the connection began closing meanwhile. */
type Quiesce = () => Promise<number[]>;

/** Replaces the whole memory table, after I/O on the old one has drained. */
export async function setMemTable(msg: Message, plane: VhostUserDataPlane, quiesce: Quiesce): Promise<void> {
  const table = decodeMemTable(msg);
  const running = await quiesce();
  try {
    plane.clearRegions();
    for (let i = 0; i < table.regions.length; i++) {
      const r = table.regions[i]!;
      msg.fds[i] = -1; // addRegion closes it, mapped or not
      addRegion(plane, r, `SET_MEM_TABLE region ${i}`);
    }
  } finally {
    closeAll(msg.fds);
  }
  plane.memoryChanged();
  plane.resume(running, 'memory table change');
}

export async function addMemReg(msg: Message, plane: VhostUserDataPlane, quiesce: Quiesce): Promise<void> {
  const r = decodeAddMemReg(msg);
  // Fixed buffers are re-registered, so I/O on the old set must drain first.
  // Until addRegion takes the fd, msg.fds owns it (closed if this fails).
  const running = await quiesce();
  msg.fds.length = 0; // addRegion closes it, mapped or not
  addRegion(plane, r, 'ADD_MEM_REG');
  plane.memoryChanged();
  plane.resume(running, 'memory table change');
}

function addRegion(plane: VhostUserDataPlane, r: MemRegionWithFd, what: string): void {
  try {
    plane.addRegion(r);
  } catch (err) {
    throw violation(`${what}: ${describe(err)}`);
  }
}

export async function remMemReg(msg: Message, plane: VhostUserDataPlane, quiesce: Quiesce): Promise<void> {
  const r = decodeRemMemReg(msg);
  closeAll(msg.fds);
  const running = await quiesce();
  if (!plane.removeRegion(r.gpa, r.size)) {
    throw violation(`REM_MEM_REG names no mapped region (gpa 0x${r.gpa.toString(16)} size ${r.size})`);
  }
  plane.memoryChanged();
  plane.resume(running, 'memory table change');
}
