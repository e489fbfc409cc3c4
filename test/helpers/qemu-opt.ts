// QEMU's option syntax for values that come from the host (paths), shared by the
// qemu-system and qemu-storage-daemon command lines.

/** QEMU option syntax: a literal comma in a value is written as ",,". */
export function qemuOptValue(v: string): string {
  return v.replace(/,/g, ',,');
}
