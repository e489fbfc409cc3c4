// The HTTP server behind --metrics-listen: GET /metrics answers in the
// Prometheus text format; every other path is 404. It runs on the main
// event loop (a scrape costs one snapshot of the counters and formatting).

import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { claimSocketPath } from '../daemon/server';
import { SocketError } from '../errors';
import { log } from '../log';
import type { QueueTotals } from './device-stats';
import { describeAddress, type MetricsAddress } from './listen-address';
import { createRegistry, type MetricsSource } from './registry';

export const METRICS_PATH = '/metrics';

export class MetricsEndpoint {
  private readonly server: http.Server;
  private readonly registry;
  /** The snapshot the current scrape reads (taken when it begins). */
  private current: QueueTotals[] = [];
  private listening = false;

  constructor(
    readonly address: MetricsAddress,
    private readonly source: MetricsSource,
  ) {
    this.registry = createRegistry(source, () => this.current);
    this.server = http.createServer((req, res) => this.handle(req, res));
  }

  /** Listens; resolves with the address served (a port 0 resolved), rejects with a SocketError. */
  start(): Promise<string> {
    const a = this.address;
    if (a.kind === 'unix') claimSocketPath(a.path);
    return new Promise((resolve, reject) => {
      const failed = (err: NodeJS.ErrnoException) => {
        reject(new SocketError(`cannot listen for metrics on ${describeAddress(a)}: ${err.code ?? err.message}`, { cause: err }));
      };
      this.server.once('error', failed);
      const listening = () => {
        this.server.off('error', failed);
        this.server.on('error', (err) => log.warn('metrics endpoint error', { error: err }));
        this.listening = true;
        const bound = a.kind === 'unix' ? a.path : describeAddress({ ...a, port: (this.server.address() as AddressInfo).port });
        log.info('metrics endpoint listening', { address: bound, path: METRICS_PATH });
        resolve(bound);
      };
      if (a.kind === 'unix') this.server.listen(a.path, listening);
      else this.server.listen({ host: a.host, port: a.port }, listening);
    });
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = new URL(req.url ?? '/', 'http://metrics').pathname;
    if (path !== METRICS_PATH) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: the metrics are at ${METRICS_PATH}\n`);
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    // Every collector reads this one snapshot (they run before the first await).
    this.current = this.source.stats.snapshot();
    this.registry.metrics().then(
      (body) => {
        res.writeHead(200, { 'content-type': this.registry.contentType });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      (err: unknown) => {
        log.warn('metrics scrape failed', { error: err as Error });
        res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n');
      },
    );
  }

  /** Stops listening, drops open connections, removes a Unix socket. */
  async stop(): Promise<void> {
    if (!this.listening) return;
    this.listening = false;
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
    if (this.address.kind === 'unix') {
      try {
        fs.unlinkSync(this.address.path);
      } catch {
        // already gone
      }
    }
  }
}
