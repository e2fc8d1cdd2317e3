/**
 * Keep-alive agents per backend socket, shared by the readiness probe and the
 * proxy: the connection the probe opened stays in the pool, so a session's
 * first proxied request does not pay for a new bridge connection.
 */
import http from 'node:http';

const agents = new Map<string, http.Agent>();

export function backendAgent(socketPath: string): http.Agent {
  let a = agents.get(socketPath);
  if (!a) {
    a = new http.Agent({ keepAlive: true, maxSockets: 256 });
    agents.set(socketPath, a);
  }
  return a;
}

/** Close the connections to a backend that is gone. */
export function dropBackendAgent(socketPath: string): void {
  agents.get(socketPath)?.destroy();
  agents.delete(socketPath);
}

export function dropAllBackendAgents(): void {
  for (const a of agents.values()) a.destroy();
  agents.clear();
}
