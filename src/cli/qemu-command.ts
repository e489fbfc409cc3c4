// The QEMU command line that attaches a guest to a vublk socket. vhost-user
// needs the guest's RAM shared (memory-backend-memfd share=on) so vublk can
// map it; reconnect=1 lets QEMU reattach after vublk restarts.

export function qemuCommandLine(socketPath: string, queues: number): string {
  return [
    'qemu-system-x86_64 -m 1G',
    '-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem',
    `-chardev socket,id=vublk0,path=${socketPath},reconnect=1`,
    `-device vhost-user-blk-pci,chardev=vublk0,num-queues=${queues}`,
    '...',
  ].join(' \\\n    ');
}
