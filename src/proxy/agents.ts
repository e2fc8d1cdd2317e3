/**
 * Keep-alive agents per port link, shared by the readiness probe and the
 * proxy: the connection the probe opened stays in the pool, so a session's
 * first proxied request does not pay for a new backend connection.
 */
import http from 'node:http';
import type { PortLink } from '../runtimes/types.js';

const agents = new Map<string, http.Agent>();

export function backendAgent(link: PortLink): http.Agent {
  let a = agents.get(link.key);
  if (!a) {
    a = new http.Agent({ keepAlive: true, maxSockets: 256 });
    // Every connection the agent opens is the link's (the request's host and port mean nothing here).
    a.createConnection = () => link.connect();
    agents.set(link.key, a);
  }
  return a;
}

/** Close the connections to a backend that is gone. */
export function dropBackendAgent(link: PortLink): void {
  agents.get(link.key)?.destroy();
  agents.delete(link.key);
}

export function dropAllBackendAgents(): void {
  for (const a of agents.values()) a.destroy();
  agents.clear();
}
