/**
 * The fast path's tests again with node:net sockets on both sides, as for TLS
 * clients, Docker links through gVisor, and machines without the kiln-wire
 * addon (KILN_NATIVE_WIRES=0 turns it off).
 */
process.env.KILN_NATIVE_WIRES = '0';
await import('./fast-proxy.test.js');
