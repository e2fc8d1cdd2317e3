/**
 * Sessions in a real browser (Debian's Chromium, driven by playwright-core):
 * a deep link lands in a running demo whose WebSocket echoes; and what one
 * session's page can read of another's, with sessions on kiln's origin and
 * on origins of their own (`sessions.origin`, `<session id>.localhost`,
 * which Chromium resolves to loopback).
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { freePort, startTestKiln, testConfig, type TestKiln } from '../helpers.js';

/** A kiln on loopback whose demo template is public with a warm pool; `origin` puts sessions on hosts of their own. */
async function startKilnOn(port: number, origin: string | null): Promise<TestKiln> {
  const c = testConfig({ budget: { cpuTotal: 64, memoryTotalMb: 64 * 1024 }, sessions: { origin } });
  c.templates['demo-web'] = { ...c.templates['demo-web']!, public: true, pool: { min: 2, max: 6 }, limits: { cpus: 0.25, memoryMb: 128, pids: 64 } };
  const k = await startTestKiln(c);
  await k.app.listen({ port, host: '127.0.0.1' });
  for (let i = 0; i < 600 && k.kiln.sessions.poolViews().find((p) => p.template === 'demo-web')!.ready < 2; i++) await new Promise((r) => setTimeout(r, 50));
  return k;
}

/** What a page's script gets from fetching `url` with its cookies: the text, or the error the browser raised. */
async function readFrom(page: Page, url: string): Promise<string> {
  return page.evaluate(async (u) => {
    try {
      const res = await fetch(u, { credentials: 'include' });
      return `read ${res.status}: ${await res.text()}`;
    } catch (e) {
      return `refused: ${(e as Error).name}`;
    }
  }, url);
}

/** Open the deep link in a new tab; the tab lands in a session's demo page. */
async function open(context: BrowserContext, base: string): Promise<Page> {
  const page = await context.newPage();
  const res = await page.goto(`${base}/open/demo-web`);
  assert.equal(res?.status(), 200, await res?.text());
  await page.getByText('Kiln demo session').waitFor();
  return page;
}

describe('sessions in a browser', () => {
  let browser: Browser;
  before(async () => {
    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      // Root in CI: no Chromium sandbox. Nothing may reach beyond loopback.
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  after(async () => {
    await browser.close();
  });

  test('on origins of their own: a deep link lands at <id>.localhost, the WebSocket echoes, and no session page reads another session or the API', async () => {
    const port = await freePort();
    const k = await startKilnOn(port, `http://*.localhost:${port}`);
    const context = await browser.newContext();
    try {
      const a = await open(context, `http://127.0.0.1:${port}`);
      const hostA = new URL(a.url()).host;
      assert.match(a.url(), new RegExp(`^http://[0-9a-f-]{36}\\.localhost:${port}/$`), 'the token left the address bar');
      await a.locator('#log').getByText('connected').waitFor();
      await a.locator('#msg').fill('from a real browser');
      await a.locator('#send').click();
      await a.locator('#log').getByText('echo: from a real browser').waitFor();
      assert.equal(await a.evaluate(() => document.cookie), '', 'the session cookie is HttpOnly');

      const b = await open(context, `http://127.0.0.1:${port}`);
      const hostB = new URL(b.url()).host;
      assert.notEqual(hostB, hostA, 'a second click gets another instance');
      // Each page reads its own server; the browser holds both cookies, yet A's script cannot read B, nor kiln's API.
      assert.match(await readFrom(a, '/info'), /^read 200: .*"path": "\/info"/);
      assert.match(await readFrom(b, '/info'), /^read 200: /);
      assert.equal(await readFrom(a, `http://${hostB}/info`), 'refused: TypeError');
      // A WebSocket, which CORS does not cover, from A's page to B's server: it never opens.
      const socket = await a.evaluate(
        (u) =>
          new Promise<string>((resolve) => {
            const ws = new WebSocket(u);
            ws.onopen = () => resolve('opened');
            ws.onerror = () => resolve('failed');
          }),
        `ws://${hostB}/ws`,
      );
      assert.equal(socket, 'failed');
      assert.equal(await readFrom(a, `http://127.0.0.1:${port}/v1/sessions`), 'refused: TypeError');
      assert.equal(await readFrom(a, `http://localhost:${port}/v1/sessions`), 'refused: TypeError');
    } finally {
      await context.close();
      await k.close();
    }
  });

  test('on kiln’s shared origin (the default), one session’s page can read another’s that the same browser opened: why sessions.origin exists', async () => {
    const port = await freePort();
    const k = await startKilnOn(port, null);
    const context = await browser.newContext();
    try {
      const a = await open(context, `http://127.0.0.1:${port}`);
      const b = await open(context, `http://127.0.0.1:${port}`);
      const pathB = new URL(b.url()).pathname;
      assert.match(pathB, /^\/s\/[0-9a-f-]{36}\/$/);
      assert.match(await readFrom(a, `${pathB}info`), /^read 200: .*"path": "\/info"/);
    } finally {
      await context.close();
      await k.close();
    }
  });
});
