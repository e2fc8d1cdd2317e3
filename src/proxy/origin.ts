/**
 * Sessions on origins of their own. With `sessions.origin:
 * https://*.sessions.example.org`, a session is served at
 * `https://<session id>.sessions.example.org/`: its pages cannot script
 * another session's pages, or read their cookies, as pages on one shared
 * origin (`/s/<token>/` beside kiln's API) can. JupyterHub's `subdomain_host`
 * is the same idea.
 *
 * The host name carries the session id, never the token: host names travel
 * in DNS queries, TLS handshakes and logs. The token comes in the path once
 * (`/s/<token>/`) and the proxy trades it for a cookie of that host alone.
 */
import type { KilnConfig } from '../config/schema.js';

/** Session paths on kiln's own origin, and the path a token comes in on a session host: `/s/<token>/`. */
export const PREFIX = '/s/';

/** Session ids are UUIDs: lower-case, 36 characters, a valid DNS label. */
const SESSION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export class SessionOrigins {
  private constructor(
    /** `https://` or `http://`. */
    private readonly scheme: string,
    /** `.sessions.example.org`: what follows the session id in a host name. */
    private readonly suffix: string,
    /** `:8443`, or empty for the scheme's port. */
    private readonly port: string,
  ) {}

  /** From `sessions.origin` (its form checked by the config schema); undefined when sessions share kiln's origin. */
  static of(config: KilnConfig): SessionOrigins | undefined {
    const pattern = config.sessions.origin;
    if (!pattern) return undefined;
    const m = /^(https?:\/\/)\*(\.[^:]+)(:[0-9]+)?$/.exec(pattern);
    if (!m) throw new Error(`sessions.origin: ${pattern} is not like https://*.sessions.example.org`);
    return new SessionOrigins(m[1]!, m[2]!, m[3] ?? '');
  }

  /**
   * The session id a `Host` field names, or undefined when it names no
   * session host. The port is not compared: behind a reverse proxy the port
   * kiln sees is not the one browsers use.
   */
  idOf(host: string | undefined): string | undefined {
    if (!host) return undefined;
    const colon = host.lastIndexOf(':');
    const name = (colon > 0 && !host.endsWith(']') ? host.slice(0, colon) : host).toLowerCase().replace(/\.$/, '');
    if (!name.endsWith(this.suffix)) return undefined;
    const label = name.slice(0, name.length - this.suffix.length);
    return SESSION_ID.test(label) ? label : undefined;
  }

  /** The absolute URL of `path` on the session's own host. */
  url(id: string, path: string): string {
    return `${this.scheme}${id}${this.suffix}${this.port}${path}`;
  }

  /**
   * Whether a request that has only the host's cookie to show comes from the
   * session's own pages (or from no page: curl, an address typed in). Other
   * sessions' hosts are the same site, so `SameSite` does not keep their pages
   * from sending this host's cookie: their fetches, form posts and WebSockets
   * (which CORS does not cover) are refused. Following a link (a top-level
   * GET) is not: the page it opens runs on this host, out of their reach.
   */
  fromOwnPages(id: string, caller: Caller): boolean {
    if (caller.fetchSite === 'same-site' || caller.fetchSite === 'cross-site') return caller.navigate && (caller.method === 'GET' || caller.method === 'HEAD');
    return caller.origin === undefined || caller.origin === this.url(id, '');
  }

  /** Whether browsers reach session hosts over HTTPS (their cookies are then `Secure`). */
  get secure(): boolean {
    return this.scheme === 'https://';
  }
}

/** What a request says of the page that sent it (the fields browsers set: `Origin`, `Sec-Fetch-Site`, `Sec-Fetch-Mode`). */
export interface Caller {
  method: string;
  /** `Sec-Fetch-Mode: navigate`: a top-level or frame navigation. */
  navigate: boolean;
  origin: string | undefined;
  fetchSite: string | undefined;
}

/** Where a session is reached: the token URL, on kiln's origin or on the session's own. */
export function sessionUrl(origins: SessionOrigins | undefined, id: string, token: string): string {
  const path = `${PREFIX}${token}/`;
  return origins ? origins.url(id, path) : path;
}
