#!/usr/bin/env node
// End-to-end test of the Confab browser client against the real stack.
//
// Starts: redis-server, two gateways (A and B) serving gateway/web/dist, the
// persistence / cleanup / completion workers and the mock OpenAI server; drives
// two Chromium contexts (alice on gateway A, bob on gateway B) through the
// scenario below; saves a screenshot per step to <repo>/target/e2e-screenshots/;
// kills every process it started on exit (also on failure / Ctrl-C).
//
// Env: CONFAB_BIN_DIR (default <repo>/target/debug), CHROMIUM (default
// /usr/bin/chromium), CONFAB_E2E_SKIP_BUILD=1 to reuse an existing dist/,
// CONFAB_E2E_HEADED=1 to watch.
// Output: one line per step, then "N passed, M failed"; exit code 1 on any failure.

import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const webDir = path.resolve(here, '..');
const repoRoot = path.resolve(webDir, '../..');
const binDir = path.resolve(process.env.CONFAB_BIN_DIR ?? path.join(repoRoot, 'target/debug'));
const distDir = path.join(webDir, 'dist');
const shotDir = path.join(repoRoot, 'target/e2e-screenshots');
const logDir = path.join(repoRoot, 'target/e2e-logs');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';

const rand = randomBytes(4).toString('hex');
const ALICE = `alice-${rand}`;
const BOB = `bob-${rand}`;
const PASSWORD = `pw-${rand}-secret`;
const TITLE = `Launch plan ${rand}`;

// ---------------------------------------------------------------------------
// process management

/** @type {Map<string, import('node:child_process').ChildProcess>} */
const procs = new Map();
const exits = new Map();
let shuttingDown = false;

function killAll(signal = 'SIGKILL') {
  for (const child of procs.values()) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        child.kill(signal);
      } catch {
        /* already gone */
      }
    }
  }
}
process.on('exit', () => killAll('SIGKILL'));
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    console.error(`\n${sig}: stopping everything`);
    killAll('SIGKILL');
    process.exit(130);
  });
}
process.on('uncaughtException', (err) => {
  console.error('uncaught exception:', err);
  killAll('SIGKILL');
  process.exit(1);
});
process.on('unhandledRejection', (err) => {
  console.error('unhandled rejection:', err);
  killAll('SIGKILL');
  process.exit(1);
});

function start(name, cmd, args, env = {}) {
  fs.mkdirSync(logDir, { recursive: true });
  const logFile = path.join(logDir, `${name}.log`);
  const out = fs.openSync(logFile, 'a');
  fs.writeSync(out, `\n==== ${new Date().toISOString()} starting ${cmd} ${args.join(' ')}\n`);
  const child = spawn(cmd, args, {
    cwd: repoRoot,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info', NO_COLOR: '1', ...env },
    stdio: ['ignore', out, out],
  });
  fs.closeSync(out);
  exits.delete(name);
  child.on('error', (err) => exits.set(name, `failed to start: ${err.message}`));
  child.on('exit', (code, signal) => {
    exits.set(name, signal ? `killed by ${signal}` : `exited with code ${code}`);
    if (!shuttingDown && !child.expectedExit) {
      console.log(`   ! process ${name} ${exits.get(name)} (log: ${path.relative(repoRoot, logFile)})`);
    }
  });
  procs.set(name, child);
  return child;
}

async function stop(name, signal = 'SIGTERM') {
  const child = procs.get(name);
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.expectedExit = true;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  await Promise.race([gone, sleep(3000)]);
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGKILL');
    await Promise.race([gone, sleep(2000)]);
  }
}

function tail(name, lines = 25) {
  try {
    const text = fs.readFileSync(path.join(logDir, `${name}.log`), 'utf8');
    return text.trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitFor(what, fn, timeoutMs = 15000, everyMs = 150) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
    }
    await sleep(everyMs);
  }
}

function tcpOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

async function httpStatus(url) {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
    return { status: r.status, body: await r.text() };
  } catch {
    return { status: 0, body: '' };
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

// ---------------------------------------------------------------------------
// the stack

const ports = {};
const baseUrl = (p) => `http://127.0.0.1:${p}`;
// Open (seed-style) chats expire after this much inactivity, so the run can watch one expire.
const OPEN_TTL_SECS = Number(process.env.CONFAB_E2E_OPEN_TTL ?? 15);
const commonEnv = { CONVERSATION_TTL_SECS: String(OPEN_TTL_SECS) };

function gatewayEnv(port, id) {
  return {
    ...commonEnv,
    GATEWAY_ADDR: `127.0.0.1:${port}`,
    GATEWAY_ID: id,
    REDIS_URL: `redis://127.0.0.1:${ports.redis}`,
    WEB_DIR: distDir,
  };
}

async function startGateway(name, port) {
  const child = start(name, path.join(binDir, 'gateway'), [], gatewayEnv(port, `${name}-${rand}`));
  await waitFor(
    `${name} to answer /readyz on :${port}`,
    async () => {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`${name} ${exits.get(name) ?? 'exited'}:\n${tail(name)}`);
      }
      const r = await httpStatus(`${baseUrl(port)}/readyz`);
      return r.status === 200;
    },
    30000,
  );
}

async function startStack() {
  for (const bin of ['gateway', 'workers', 'mock-openai']) {
    const p = path.join(binDir, bin);
    assert(fs.existsSync(p), `missing binary ${p} — build the backend first (cargo build)`);
  }
  ports.redis = await freePort();
  ports.mock = await freePort();
  ports.a = await freePort();
  ports.b = await freePort();
  start('redis', 'redis-server', ['--port', String(ports.redis), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
  await waitFor('redis', () => tcpOpen(ports.redis), 10000);
  start('mock-openai', path.join(binDir, 'mock-openai'), [], {
    MOCK_OPENAI_ADDR: `127.0.0.1:${ports.mock}`,
    MOCK_TOKENS_PER_SEC: '20',
  });
  const workerEnv = {
    ...commonEnv,
    REDIS_URL: `redis://127.0.0.1:${ports.redis}`,
    OPENAI_BASE_URL: `http://127.0.0.1:${ports.mock}/v1`,
    OPENAI_API_KEY: 'test',
  };
  for (const role of ['persistence', 'cleanup', 'completion']) {
    start(`workers-${role}`, path.join(binDir, 'workers'), [role], { ...workerEnv, WORKER_NAME: `${role}-${rand}` });
  }
  await waitFor('mock-openai', () => tcpOpen(ports.mock), 10000);
  await Promise.all([startGateway('gateway-a', ports.a), startGateway('gateway-b', ports.b)]);
  const index = await httpStatus(`${baseUrl(ports.a)}/`);
  assert(index.status === 200 && index.body.includes('id="root"'), `gateway does not serve dist/index.html at / (status ${index.status})`);
  const deep = await httpStatus(`${baseUrl(ports.a)}/chat/some-client-route`);
  assert(deep.status === 200 && deep.body.includes('id="root"'), `no index.html fallback for client routes (status ${deep.status})`);
  await sleep(500);
  for (const role of ['persistence', 'cleanup', 'completion']) {
    const name = `workers-${role}`;
    assert(!exits.has(name), `${name} ${exits.get(name)}:\n${tail(name)}`);
  }
}

// ---------------------------------------------------------------------------
// steps

const results = [];
let stepNo = 0;
let aborted = null;

async function step(name, shots, fn) {
  stepNo += 1;
  const n = String(stepNo).padStart(2, '0');
  if (aborted) {
    results.push({ name, ok: false });
    console.log(`✗ ${n} ${name} — skipped (${aborted})`);
    return false;
  }
  const t0 = Date.now();
  let ok = true;
  try {
    await fn();
    console.log(`✓ ${n} ${name} (${Date.now() - t0} ms)`);
  } catch (err) {
    ok = false;
    console.log(`✗ ${n} ${name} (${Date.now() - t0} ms)\n   ${String(err?.stack ?? err).split('\n').slice(0, 6).join('\n   ')}`);
    for (const [proc, why] of exits) {
      const child = procs.get(proc);
      if (!child?.expectedExit) console.log(`   process ${proc} ${why}; last log lines:\n${indent(tail(proc, 15))}`);
    }
  }
  results.push({ name, ok });
  const slug = name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 50);
  for (const [who, page] of Object.entries(shots())) {
    if (!page || page.isClosed()) continue;
    const file = path.join(shotDir, `${n}-${slug}-${who}.png`);
    try {
      await page.screenshot({ path: file });
    } catch (err) {
      console.log(`   (screenshot ${path.basename(file)} failed: ${err.message})`);
    }
  }
  return ok;
}

const indent = (s) => s.split('\n').map((l) => `     | ${l}`).join('\n');

// page helpers --------------------------------------------------------------

const messageBox = (page) => page.getByRole('textbox', { name: 'Message' });
const connLabel = (page) => page.locator('.conn [role=status]').first();
const storedMessages = (page, text) => page.locator('.timeline li.msg[data-message-id]').filter({ hasText: text });

async function send(page, text) {
  const box = messageBox(page);
  await box.fill(text);
  await page.getByRole('button', { name: 'Send', exact: true }).click();
}

async function signUp(page, base, username) {
  await page.goto(base + '/');
  await page.getByRole('button', { name: 'Sign up', exact: true }).click();
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.getByText(`Signed in as ${username}`).waitFor();
  await waitFor(`${username} connected`, async () => (await connLabel(page).textContent()) === 'Connected');
}

async function countExact(page, text) {
  return storedMessages(page, text).count();
}

/** Waits until no assistant answer is in flight, and none started for `quietMs` (queued answers). */
async function assistantIdle(page, timeoutMs = 40000, quietMs = 2000) {
  let quietSince = Date.now();
  await waitFor(
    'the assistant to finish answering',
    async () => {
      const busy = await page.locator('.timeline li.msg.assistant[data-response-id]').count();
      if (busy > 0) quietSince = Date.now();
      return busy === 0 && Date.now() - quietSince >= quietMs;
    },
    timeoutMs,
    100,
  );
}

async function noDuplicateIds(page) {
  const ids = await page.locator('.timeline li.msg[data-message-id]').evaluateAll((els) =>
    els.map((e) => e.getAttribute('data-message-id')),
  );
  const dup = ids.filter((id, i) => ids.indexOf(id) !== i);
  assert(dup.length === 0, `messages rendered twice: ${dup.join(', ')}`);
  return ids.length;
}

// ---------------------------------------------------------------------------

async function main() {
  fs.rmSync(shotDir, { recursive: true, force: true });
  fs.mkdirSync(shotDir, { recursive: true });
  fs.rmSync(logDir, { recursive: true, force: true });

  if (process.env.CONFAB_E2E_SKIP_BUILD !== '1' || !fs.existsSync(path.join(distDir, 'index.html'))) {
    console.log('building gateway/web (npm run build)…');
    const b = spawnSync('npm', ['run', 'build'], { cwd: webDir, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
    if (b.status !== 0) {
      console.log(b.stdout, b.stderr);
      console.log('0 passed, 1 failed');
      process.exit(1);
    }
  }

  let browser;
  let alice;
  let bob;
  let guest;
  const pageErrors = [];
  let chatId = null;
  let openId = null;
  let aliceToken = null;

  await step('stack starts (redis, 2 gateways, workers, mock-openai)', () => ({}), async () => {
    await startStack();
  });
  if (!results.at(-1).ok) aborted = 'the stack did not start';

  if (!aborted) {
    browser = await chromium.launch({
      executablePath: chromiumPath,
      headless: process.env.CONFAB_E2E_HEADED !== '1',
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
      ].filter((a) => a !== '--headless' || process.env.CONFAB_E2E_HEADED !== '1'),
    });
    const mk = async (who) => {
      const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      const page = await ctx.newPage();
      page.setDefaultTimeout(15000);
      page.on('pageerror', (err) => pageErrors.push(`${who}: ${err.message}`));
      // The gateway's Content-Security-Policy must not block anything the client does.
      page.on('console', (msg) => {
        if (msg.type() === 'error' && /Content Security Policy/i.test(msg.text())) pageErrors.push(`${who}: ${msg.text()}`);
      });
      return page;
    };
    alice = await mk('alice');
    bob = await mk('bob');
  }
  const both = () => ({ alice, bob });

  await step(`alice signs up on gateway A (${ALICE})`, () => ({ alice }), async () => {
    await signUp(alice, baseUrl(ports.a), ALICE);
  });
  await step(`bob signs up on gateway B (${BOB})`, () => ({ bob }), async () => {
    await signUp(bob, baseUrl(ports.b), BOB);
  });
  if (!aborted && results.slice(-2).some((r) => !r.ok)) aborted = 'sign-up failed';

  await step('session survives a reload', () => ({ alice }), async () => {
    await alice.reload();
    await alice.getByText(`Signed in as ${ALICE}`).waitFor();
    aliceToken = await alice.evaluate(() => JSON.parse(localStorage.getItem('confab.session') ?? 'null')?.token ?? null);
    assert(aliceToken, 'no token in localStorage');
    await waitFor('alice connected after reload', async () => (await connLabel(alice).textContent()) === 'Connected');
  });

  await step('alice creates a chat, picking bob from the invite suggestions', () => ({ alice }), async () => {
    await alice.getByRole('button', { name: /new chat/i }).first().click();
    const dialog = alice.getByRole('dialog', { name: 'New chat' });
    await dialog.waitFor();
    await dialog.getByLabel('Title').fill(TITLE);
    const combo = dialog.getByRole('combobox', { name: 'Invite people' });
    await combo.pressSequentially(BOB.slice(0, BOB.length - 2), { delay: 40 });
    const option = dialog.getByRole('option', { name: BOB, exact: true });
    await option.waitFor();
    assert((await combo.getAttribute('aria-expanded')) === 'true', 'combobox not expanded while suggestions show');
    await alice.screenshot({ path: path.join(shotDir, `${String(stepNo).padStart(2, '0')}-invite-suggestions-alice.png`) });
    await option.click();
    await dialog.getByRole('list', { name: 'Invited' }).getByText(BOB, { exact: true }).waitFor();
    await dialog.getByRole('button', { name: 'Create' }).click();
    await dialog.waitFor({ state: 'detached' });
    await alice.getByRole('heading', { level: 1, name: TITLE }).waitFor();
    chatId = decodeURIComponent(new URL(alice.url()).pathname.split('/').pop() ?? '');
    assert(chatId, `no chat id in URL ${alice.url()}`);
    await alice.getByRole('navigation', { name: 'Conversations' }).getByRole('link', { name: new RegExp(TITLE) }).waitFor();
  });

  await step("the chat appears in bob's list at once (no reload)", () => ({ bob }), async () => {
    const link = bob.getByRole('navigation', { name: 'Conversations' }).getByRole('link', { name: new RegExp(TITLE) });
    await link.waitFor({ timeout: 5000 });
    await link.click();
    await bob.getByRole('heading', { level: 1, name: TITLE }).waitFor();
  });

  await step('they exchange messages live, with a typing indicator', both, async () => {
    const hello = `Hello Bob, it's alice ${rand}`;
    await send(alice, hello);
    await storedMessages(bob, hello).waitFor();
    await storedMessages(alice, hello).waitFor();
    // bob types (without sending): alice sees "bob is typing…"
    await messageBox(bob).pressSequentially('Hi Al', { delay: 60 });
    await alice.locator('.typing').filter({ hasText: `${BOB} is typing…` }).waitFor({ timeout: 5000 });
    await alice.screenshot({ path: path.join(shotDir, `${String(stepNo).padStart(2, '0')}-typing-indicator-alice.png`) });
    await messageBox(bob).fill(`Hi Alice! **Bold** reply ${rand}`);
    await messageBox(bob).press('Enter'); // Enter sends
    await storedMessages(alice, `Hi Alice! Bold reply ${rand}`).waitFor();
    assert((await alice.locator('.timeline li.msg strong', { hasText: 'Bold' }).count()) >= 1, 'Markdown bold not rendered');
    // the typing note disappears (message arrived, or ~3 s later)
    await waitFor('typing indicator to clear', async () => ((await alice.locator('.typing').textContent()) ?? '').trim() === '', 6000);
    const members = alice.getByRole('complementary', { name: 'Members' });
    if (!(await members.isVisible())) await alice.getByRole('button', { name: 'Members' }).click();
    await members.getByText(BOB, { exact: true }).waitFor();
  });

  await step('alice invites a third person from inside the chat; bob sees them join live', both, async () => {
    const CAROL = `carol-${rand}`;
    const r = await fetch(`${baseUrl(ports.a)}/api/users`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username: CAROL, password: PASSWORD }),
    });
    assert(r.status === 201, `POST /api/users for ${CAROL} -> ${r.status}`);
    await alice.getByRole('button', { name: 'Invite', exact: true }).click();
    const dialog = alice.getByRole('dialog', { name: 'Invite people' });
    await dialog.waitFor();
    const combo = dialog.getByRole('combobox', { name: 'Invite people' });
    await combo.pressSequentially(CAROL.slice(0, 8), { delay: 40 });
    await dialog.getByRole('option', { name: CAROL, exact: true }).waitFor();
    // keyboard this time: arrows + Enter
    const options = await dialog.getByRole('option').allTextContents();
    const idx = options.findIndex((o) => o.endsWith(CAROL));
    for (let i = 0; i < idx; i++) await combo.press('ArrowDown');
    await combo.press('Enter');
    await dialog.getByRole('list', { name: 'To invite' }).getByText(CAROL, { exact: true }).waitFor();
    await dialog.getByRole('button', { name: 'Invite', exact: true }).click();
    await dialog.waitFor({ state: 'detached' });
    const bobMembers = bob.getByRole('complementary', { name: 'Members' });
    if (!(await bobMembers.isVisible())) await bob.getByRole('button', { name: 'Members' }).click();
    await bobMembers.getByText(CAROL, { exact: true }).waitFor({ timeout: 10000 });
    await bob.locator('.timeline .note', { hasText: `${CAROL} joined` }).waitFor({ timeout: 10000 });
    await alice.getByRole('complementary', { name: 'Members' }).getByText(CAROL, { exact: true }).waitFor();
  });

  await step('the assistant answer streams token by token and renders a table and code', both, async () => {
    await assistantIdle(alice, 40000);
    await assistantIdle(bob, 40000);
    const question = `@assistant what can you do? ${rand}`;
    await send(alice, question);
    const streamingMd = alice.locator('.timeline li.msg.assistant[data-status="streaming"] .md');
    const partial = await waitFor(
      'partial assistant text while streaming',
      async () => {
        const t = (await streamingMd.first().textContent({ timeout: 500 }).catch(() => '')) ?? '';
        return t.trim().length > 0 ? t : null;
      },
      30000,
      50,
    );
    await alice.screenshot({ path: path.join(shotDir, `${String(stepNo).padStart(2, '0')}-streaming-partial-alice.png`) });
    // The demo model quotes the question, which identifies our answer.
    const answer = alice.locator('.timeline li.msg.assistant[data-message-id]').filter({ hasText: `what can you do? ${rand}` });
    await answer.waitFor({ timeout: 40000 });
    const full = (await answer.textContent()) ?? '';
    assert(full.length > partial.trim().length, `final answer (${full.length} chars) not longer than the partial (${partial.length})`);
    assert(full.includes('local demo model'), `unexpected answer text: ${full.slice(0, 120)}`);
    await answer.locator('table th').first().waitFor();
    assert((await answer.locator('table tr').count()) >= 3, 'table has too few rows');
    await answer.locator('pre code.hljs').first().waitFor();
    assert((await answer.locator('pre code .hljs-keyword, pre code [class^="hljs-"]').count()) > 0, 'code block not highlighted');
    await waitFor(
      'the streaming bubble to be replaced by the stored answer',
      async () => (await alice.locator('.timeline li.msg.assistant[data-response-id]').count()) === 0,
      3000,
    );
    assert((await answer.count()) === 1, `the answer is shown ${await answer.count()} times`);
    // bob sees the same stored answer once
    await bob
      .locator('.timeline li.msg.assistant[data-message-id]')
      .filter({ hasText: `what can you do? ${rand}` })
      .waitFor({ timeout: 15000 });
    await noDuplicateIds(alice);
    await noDuplicateIds(bob);
    await answer.scrollIntoViewIfNeeded();
  });

  let longBefore = 0;
  const longStreaming = () => alice.locator('.timeline li.msg.assistant[data-status="streaming"]');
  async function startLongAnswer() {
    await assistantIdle(alice, 40000);
    longBefore = await alice.locator('.timeline li.msg.assistant').count();
    await send(alice, `@assistant count for me [[mock tokens=400 tps=20]] ${rand}`);
    await waitFor(
      'the long answer to start streaming',
      async () => /w\d+/.test((await longStreaming().first().textContent({ timeout: 500 }).catch(() => '')) ?? ''),
      30000,
      100,
    );
  }

  await step('a page reloaded mid-answer shows the answer so far (snapshot), then live tokens', both, async () => {
    await startLongAnswer();
    await bob.reload();
    await bob.getByRole('heading', { level: 1, name: TITLE }).waitFor();
    const bobStreaming = bob.locator('.timeline li.msg.assistant[data-status="streaming"] .md');
    const bobText = await waitFor(
      'bob to see the answer so far after reloading',
      async () => {
        const t = (await bobStreaming.first().textContent({ timeout: 500 }).catch(() => '')) ?? '';
        return /\bw\d+/.test(t) ? t : null;
      },
      10000,
      100,
    );
    await bob.screenshot({ path: path.join(shotDir, `${String(stepNo).padStart(2, '0')}-mid-answer-reload-bob.png`) });
    assert(
      bobText.trim().startsWith('w1 w2 w3'),
      `after the reload bob's answer starts at "${bobText.trim().slice(0, 24)}…" instead of "w1 w2 w3" (no snapshot delta on subscribe?)`,
    );
  });

  await step('Stop halts a long answer and the bubble says it stopped', both, async () => {
    if ((await longStreaming().count()) === 0) await startLongAnswer();
    const stop = alice.getByRole('button', { name: 'Stop', exact: true });
    await stop.waitFor();
    await stop.click();
    const stopped = alice.locator('.timeline li.msg.assistant').filter({ has: alice.locator('.badge', { hasText: 'Stopped' }) });
    await stopped.first().waitFor({ timeout: 15000 });
    await stop.waitFor({ state: 'detached', timeout: 10000 });
    const text = (await stopped.first().textContent()) ?? '';
    const words = (text.match(/\bw\d+\b/g) ?? []).length;
    assert(words > 0 && words < 400, `stopped answer has ${words} of 400 tokens`);
    await sleep(1500);
    const wordsLater = ((await stopped.first().textContent()) ?? '').match(/\bw\d+\b/g)?.length ?? 0;
    assert(wordsLater === words, `answer kept growing after Stop (${words} -> ${wordsLater})`);
    assert((await alice.locator('.timeline li.msg.assistant').count()) === longBefore + 1, 'expected exactly one new assistant bubble');
    // bob's copy ends the same way
    const bobStopped = bob.locator('.timeline li.msg.assistant').filter({ has: bob.locator('.badge', { hasText: 'Stopped' }) });
    await bobStopped.first().waitFor({ timeout: 10000 });
    await waitFor(
      "bob's copy to match alice's",
      async () => (((await bobStopped.first().textContent()) ?? '').match(/\bw\d+\b/g)?.length ?? 0) === words,
      5000,
    );
    await stopped.first().scrollIntoViewIfNeeded();
  });

  await step('HTML in a message stays inert (no script runs, no img)', both, async () => {
    await assistantIdle(alice, 40000);
    const evil = `xss ${rand} <img src=x onerror="window.__xss=1"> <script>window.__xss=2</script>`;
    await send(bob, evil);
    const onAlice = storedMessages(alice, `xss ${rand}`);
    await onAlice.first().waitFor();
    await sleep(500);
    const literal = (await onAlice.first().textContent()) ?? '';
    assert(literal.includes('<script>window.__xss=2</script>'), 'script tag not shown as text');
    for (const [who, page] of Object.entries(both())) {
      const v = await page.evaluate(() => window.__xss);
      assert(v === undefined, `${who}: window.__xss = ${v}`);
      const bad = await page.locator('.timeline img, .timeline script, .timeline [onerror]').count();
      assert(bad === 0, `${who}: ${bad} img/script/onerror elements inside messages`);
    }
  });

  await step('gateway A is killed; bob sends 2 messages via gateway B; A restarts; alice gets both exactly once', both, async () => {
    await assistantIdle(alice, 40000);
    await assistantIdle(bob, 40000);
    const one = `Missed message one ${rand}`;
    const two = `Missed message two ${rand}`;
    const gw = procs.get('gateway-a');
    gw.expectedExit = true;
    gw.kill('SIGKILL');
    await waitFor('gateway A to die', () => gw.signalCode !== null || gw.exitCode !== null, 5000);
    await waitFor('alice to show Reconnecting…', async () => (await connLabel(alice).textContent()) === 'Reconnecting…', 10000);
    await alice.screenshot({ path: path.join(shotDir, `${String(stepNo).padStart(2, '0')}-reconnecting-alice.png`) });
    await send(bob, one);
    await send(bob, two);
    await storedMessages(bob, one).waitFor();
    await storedMessages(bob, two).waitFor();
    assert((await countExact(alice, one)) === 0, 'alice got a message while her gateway was dead?');
    await startGateway('gateway-a', ports.a);
    await waitFor('alice to show Connected again', async () => (await connLabel(alice).textContent()) === 'Connected', 30000);
    await storedMessages(alice, one).waitFor({ timeout: 15000 });
    await storedMessages(alice, two).waitFor({ timeout: 15000 });
    await sleep(2500); // let any duplicate (replay + live) arrive
    assert((await countExact(alice, one)) === 1, `"${one}" shown ${await countExact(alice, one)} times`);
    assert((await countExact(alice, two)) === 1, `"${two}" shown ${await countExact(alice, two)} times`);
    const order = await alice.locator('.timeline li.msg[data-message-id]').evaluateAll((els) => els.map((e) => e.textContent ?? ''));
    const i1 = order.findIndex((t) => t.includes(one));
    const i2 = order.findIndex((t) => t.includes(two));
    assert(i1 >= 0 && i2 > i1, 'missed messages out of order');
    await assistantIdle(alice, 40000);
    await noDuplicateIds(alice);
    await noDuplicateIds(bob);
  });

  await step('readable at 375 px wide (phone)', () => ({ bob }), async () => {
    await bob.setViewportSize({ width: 375, height: 760 });
    await sleep(300);
    const overflow = await bob.evaluate(() => document.documentElement.scrollWidth);
    assert(overflow <= 375, `page is ${overflow}px wide at 375px viewport`);
    await messageBox(bob).waitFor();
    assert(await bob.getByRole('button', { name: 'Back to chats' }).isVisible(), 'no back button on phone layout');
    const box = await messageBox(bob).boundingBox();
    assert(box && box.x >= 0 && box.x + box.width <= 375, 'composer does not fit');
    await bob.screenshot({ path: path.join(shotDir, `${String(stepNo).padStart(2, '0')}-phone-chat-bob.png`) });
    await bob.getByRole('button', { name: 'Back to chats' }).click();
    await bob.getByRole('navigation', { name: 'Conversations' }).waitFor();
    const overflow2 = await bob.evaluate(() => document.documentElement.scrollWidth);
    assert(overflow2 <= 375, `list is ${overflow2}px wide at 375px`);
  });

  await step('an open conversation can be joined by id without signing in', () => ({ guest }), async () => {
    const r = await fetch(`${baseUrl(ports.b)}/api/conversations`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: '{}',
    });
    assert(r.status === 201, `POST /api/conversations (open) -> ${r.status}`);
    openId = (await r.json()).conversationId;
    const ctx = await browser.newContext({ viewport: { width: 1000, height: 760 } });
    guest = await ctx.newPage();
    guest.setDefaultTimeout(15000);
    guest.on('pageerror', (err) => pageErrors.push(`guest: ${err.message}`));
    await guest.goto(baseUrl(ports.a) + '/');
    await guest.getByLabel('Open a conversation by id').fill(openId);
    await guest.getByRole('button', { name: 'Join' }).click();
    await guest.waitForURL(`**/c/${openId}`);
    await guest.getByRole('heading', { level: 1, name: 'Open conversation' }).waitFor();
    await waitFor('guest connected', async () => (await connLabel(guest).textContent()) === 'Connected');
    const mine = `Hello, I need help ${rand}`;
    await send(guest, mine);
    const cust = storedMessages(guest, mine);
    await cust.waitFor();
    assert((await cust.getAttribute('data-sender')) === 'customer', 'not sent as customer');
    // an agent answers through the REST API (another client): shows up live
    const reply = `An agent here, how can I help? ${rand}`;
    const p = await fetch(`${baseUrl(ports.b)}/api/conversations/${openId}/messages`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ sender: 'agent', content: reply, timestamp: new Date().toISOString() }),
    });
    assert(p.status === 201, `POST message as agent -> ${p.status}`);
    await storedMessages(guest, reply).waitFor();
    // and the guest can speak as the agent too
    await guest.getByRole('radio', { name: 'Agent' }).check();
    const asAgent = `Agent speaking from the browser ${rand}`;
    await send(guest, asAgent);
    const ag = storedMessages(guest, asAgent);
    await ag.waitFor();
    assert((await ag.getAttribute('data-sender')) === 'agent', 'not sent as agent');
    await noDuplicateIds(guest);
  });

  await step('sign out ends the session', () => ({ alice }), async () => {
    await alice.getByRole('button', { name: 'Sign out' }).click();
    await alice.getByRole('button', { name: 'Sign in', exact: true }).first().waitFor();
    const stored = await alice.evaluate(() => localStorage.getItem('confab.session'));
    assert(stored === null, 'session still in localStorage');
    if (aliceToken) {
      const r = await fetch(`${baseUrl(ports.a)}/api/conversations`, { headers: { Authorization: `Bearer ${aliceToken}` } });
      assert(r.status === 401, `old token still works (GET /api/conversations -> ${r.status})`);
    }
    // and signing back in shows the chat again
    await alice.getByLabel('Username').fill(ALICE);
    await alice.getByLabel('Password').fill(PASSWORD);
    await alice.getByRole('button', { name: 'Sign in', exact: true }).last().click();
    await alice.getByRole('navigation', { name: 'Conversations' }).getByRole('link', { name: new RegExp(TITLE) }).waitFor();
  });

  await step('an open chat that times out says it expired', () => ({ guest }), async () => {
    assert(guest, 'no open chat page (earlier step failed)');
    await guest
      .getByText(/This chat has expired/)
      .waitFor({ timeout: (OPEN_TTL_SECS + 30) * 1000 });
    assert(await messageBox(guest).isDisabled(), 'composer still enabled in an expired chat');
  });

  await step('no uncaught errors in the pages', () => ({}), async () => {
    assert(pageErrors.length === 0, `page errors:\n${pageErrors.join('\n')}`);
  });

  // -------------------------------------------------------------------------
  shuttingDown = true;
  try {
    await browser?.close();
  } catch {
    /* ignore */
  }
  await Promise.all([...procs.keys()].map((n) => stop(n)));
  killAll('SIGKILL');

  const passed = results.filter((r) => r.ok).length;
  const failed = results.length - passed;
  console.log(`\nscreenshots: ${path.relative(process.cwd(), shotDir) || shotDir}`);
  console.log(`logs:        ${path.relative(process.cwd(), logDir) || logDir}`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
  void chatId;
  void openId;
}

main().catch((err) => {
  console.error(err);
  killAll('SIGKILL');
  const passed = results.filter((r) => r.ok).length;
  console.log(`${passed} passed, ${results.length - passed + 1} failed`);
  process.exit(1);
});
