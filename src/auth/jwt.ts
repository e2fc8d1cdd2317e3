/**
 * JWTs signed by the operator's own app. One algorithm, fixed in config, so
 * `alg: none` and algorithm swaps (an RS256 public key used as an HS256
 * secret) are refused by construction; `exp` is required, unlike Sparkla.
 */
import { readFileSync } from 'node:fs';
import { errors, importSPKI, jwtVerify, type CryptoKey, type JWTPayload } from 'jose';
import type { KilnConfig } from '../config/schema.js';
import { KilnError } from '../errors.js';
import { isScope, parseLimitCaps, type Principal, type Scope } from './principal.js';

type JwtConfig = NonNullable<KilnConfig['auth']['jwt']>;

export class JwtVerifier {
  private constructor(
    private readonly cfg: JwtConfig,
    private readonly key: CryptoKey | Uint8Array,
  ) {}

  /** Load the key the config names; errors say which setting is wrong. */
  static async fromConfig(cfg: JwtConfig, env: NodeJS.ProcessEnv = process.env): Promise<JwtVerifier> {
    if (cfg.algorithm === 'HS256') {
      const secret = cfg.secretFile ? readKeyFile(cfg.secretFile, 'auth.jwt.secretFile').trim() : env.KILN_JWT_SECRET;
      if (!secret) throw new KilnError('invalid_config', 'auth.jwt: HS256 needs auth.jwt.secretFile or the KILN_JWT_SECRET environment variable');
      if (Buffer.byteLength(secret) < 32) throw new KilnError('invalid_config', 'auth.jwt: the HS256 secret must be at least 32 bytes');
      return new JwtVerifier(cfg, new TextEncoder().encode(secret));
    }
    if (!cfg.publicKeyFile) throw new KilnError('invalid_config', `auth.jwt: ${cfg.algorithm} needs auth.jwt.publicKeyFile (a PEM public key)`);
    const pem = readKeyFile(cfg.publicKeyFile, 'auth.jwt.publicKeyFile');
    try {
      return new JwtVerifier(cfg, await importSPKI(pem, cfg.algorithm));
    } catch (e) {
      throw new KilnError('invalid_config', `auth.jwt.publicKeyFile: not a ${cfg.algorithm} public key in PEM (SPKI) form: ${(e as Error).message}`);
    }
  }

  /** The principal a JWT names, or a 401 that says why (never echoing the token). */
  async verify(jwt: string): Promise<Principal> {
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(jwt, this.key, {
        algorithms: [this.cfg.algorithm],
        requiredClaims: ['exp', 'sub'],
        ...(this.cfg.issuer ? { issuer: this.cfg.issuer } : {}),
        ...(this.cfg.audience ? { audience: this.cfg.audience } : {}),
        clockTolerance: 30,
      }));
    } catch (e) {
      throw unauthorized(reason(e));
    }
    const scopes = parseScopes(payload.scope);
    let limits;
    try {
      limits = parseLimitCaps(payload.limits, 'limits claim');
    } catch (e) {
      throw unauthorized((e as Error).message);
    }
    return { id: `jwt:${payload.iss ?? ''}:${payload.sub}`, kind: 'jwt', scopes, ...(limits ? { limits } : {}) };
  }
}

function readKeyFile(file: string, setting: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new KilnError('invalid_config', `${setting}: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** `scope` as a space-separated string (RFC 8693) or an array; unknown scopes grant nothing. */
function parseScopes(claim: unknown): Set<Scope> {
  const list = typeof claim === 'string' ? claim.split(' ') : Array.isArray(claim) ? claim : [];
  return new Set(list.filter((s): s is Scope => typeof s === 'string' && isScope(s)));
}

function reason(e: unknown): string {
  if (e instanceof errors.JWTExpired) return 'token expired';
  if (e instanceof errors.JWTClaimValidationFailed) return `token claim ${e.claim} is missing or wrong`;
  if (e instanceof errors.JOSEAlgNotAllowed) return 'token algorithm not allowed';
  if (e instanceof errors.JWSSignatureVerificationFailed) return 'token signature does not verify';
  return 'token is malformed';
}

export function unauthorized(why: string): KilnError {
  return new KilnError('unauthorized', `${why}; send Authorization: Bearer <API token or JWT>`, 401);
}
