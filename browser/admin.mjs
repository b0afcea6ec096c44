// Drives Palaver's web admin (/admin) in headless Debian Chromium through
// playwright-core, for tests/webadmin.rs.
//
//   node admin.mjs --url BASE --jid ADMIN --password PW --add-user NAME --add-host HOST
//                  --add-password PW --kick FULLJID [--timeout-ms N]
//
// Steps: open BASE/admin, log in, add a user with the form, check the page
// says so, kick the session FULLJID with its button, check the page says so
// and no longer lists it. One line per step on stdout: STEP <name>, then
// OK, or FAIL <reason> (exit 1).

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const opts = { timeoutMs: 40000 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    opts[k] = k === 'timeoutMs' ? Number(argv[i + 1]) : argv[i + 1];
}
const out = (l) => process.stdout.write(l.replace(/[\r\n]+/g, ' ') + '\n');

const dir = mkdtempSync(join(tmpdir(), 'palaver-admin-chromium-'));
let context = null;
async function finish(code, line) {
    out(line);
    if (context) await context.close().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
    process.exit(code);
}
setTimeout(() => finish(1, 'FAIL timed out'), opts.timeoutMs);
process.stdin.on('end', () => finish(1, 'FAIL stdin closed'));
process.stdin.on('data', () => {});
process.stdin.resume();

try {
    out('STEP launch');
    context = await chromium.launchPersistentContext(dir, { executablePath: CHROMIUM, headless: true, args: ARGS });
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (e) => process.stderr.write(`[browser] page error: ${e.message}\n`));

    out('STEP login-page');
    await page.goto(`${opts.url}/admin`, { waitUntil: 'load' });
    await page.fill('#jid', opts.jid);
    await page.fill('#password', 'not-the-password');
    await Promise.all([page.waitForNavigation(), page.click('#login-submit')]);
    if (!(await page.textContent('#error') ?? '').includes('Wrong')) {
        await finish(1, 'FAIL a wrong password was not refused');
    }
    out('STEP login');
    await page.fill('#jid', opts.jid);
    await page.fill('#password', opts.password);
    await Promise.all([page.waitForNavigation(), page.click('#login-submit')]);
    const status = await page.textContent('#status');
    if (!status || !status.includes('Sessions')) await finish(1, 'FAIL no status after login');

    out('STEP add-user');
    await page.fill('#add-user-name', opts.addUser);
    await page.selectOption('#add-user-host', opts.addHost);
    await page.fill('#add-user-password', opts.addPassword);
    await Promise.all([page.waitForNavigation(), page.click('#add-user-submit')]);
    const msg = await page.textContent('#msg');
    if (!msg || !msg.includes(`created ${opts.addUser}@${opts.addHost}`)) {
        await finish(1, `FAIL add user: ${msg ?? await page.textContent('body')}`);
    }
    out(`ADDED ${opts.addUser}@${opts.addHost}`);

    out('STEP kick');
    const button = page.locator(`button.kick[data-jid=${JSON.stringify(opts.kick)}]`);
    if ((await button.count()) !== 1) await finish(1, `FAIL no kick button for ${opts.kick}`);
    await Promise.all([page.waitForNavigation(), button.click()]);
    const after = await page.textContent('#msg');
    if (after === null || after.trim() !== 'kick_session: 0') await finish(1, `FAIL kick: ${after}`);
    out(`KICKED ${opts.kick}`);
    await finish(0, 'OK');
} catch (e) {
    await finish(1, `FAIL ${e.message}`);
}
