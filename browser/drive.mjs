// Drives Converse.js (browser/page) in headless Debian Chromium through
// playwright-core, for tests/browser.rs.
//
//   node drive.mjs --url URL (--contact JID | --room JID) --send TEXT --expect TEXT [--timeout-ms N]
//                  [--screenshot FILE] [--watch-stdin]
//
// Steps: open URL (the page logs in from its query), wait until Converse is
// connected and the chat with --contact is open, type --send into the chat
// textarea and press Enter, then wait until a message with the text --expect
// is rendered in that chat. With --room the chat is the room's view (the page
// joins the room named by its `room` query parameter).
//
// Protocol on stdout, one line each (the Rust test reads these):
//   STEP <name>            progress
//   CONNECTED <full jid>   Converse is logged in
//   CORS origin=<o> allow-origin=<a>   (BOSH only) headers of the first BOSH POST
//   SENT <text>            the message was typed and submitted
//   RECEIVED <text>        the expected message is shown in the chat view
//   OK                     everything passed (exit 0)
//   FAIL <reason>          something failed or timed out (exit 1)
// Browser console output and page errors go to stderr, prefixed "[browser]".
// With --watch-stdin the driver gives up (closing Chromium, removing its
// profile) when its stdin closes, i.e. when the test that started it is gone;
// SIGTERM and SIGINT do the same.

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    // Nothing but loopback: no host name resolves except localhost (Converse's
    // login form links logos on its website; those requests now fail at once
    // instead of leaving the machine). Not done with page.route(), which would
    // answer CORS preflights itself and so hide what the server sends.
    '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1',
];

function parseArgs(argv) {
    const opts = { timeoutMs: 40000, watchStdin: false };
    for (let i = 0; i < argv.length; i++) {
        const key = argv[i];
        if (key === '--watch-stdin') {
            opts.watchStdin = true;
            continue;
        }
        const value = argv[++i];
        if (value === undefined) throw new Error(`missing value for ${key}`);
        switch (key) {
            case '--url': opts.url = value; break;
            case '--contact': opts.contact = value; break;
            case '--room': opts.room = value; break;
            case '--send': opts.send = value; break;
            case '--expect': opts.expect = value; break;
            case '--timeout-ms': opts.timeoutMs = Number(value); break;
            case '--screenshot': opts.screenshot = value; break;
            default: throw new Error(`unknown option ${key}`);
        }
    }
    for (const k of ['url', 'send', 'expect']) {
        if (!opts[k]) throw new Error(`--${k} is required`);
    }
    if (!opts.contact === !opts.room) throw new Error('give one of --contact and --room');
    if (!(opts.timeoutMs > 0)) throw new Error('--timeout-ms must be a positive number');
    return opts;
}

// One line per message; newlines inside would break the line protocol.
function out(line) {
    process.stdout.write(line.replace(/[\r\n]+/g, ' ') + '\n');
}
function err(line) {
    process.stderr.write(line + '\n');
}

let step = 'start';
function setStep(name) {
    step = name;
    out(`STEP ${name}`);
}

// Strophe logs stanzas (Converse loglevel debug) as "%c%s color: C <stanza>":
// darkcyan for what the browser sends, darkgoldenrod for what it receives.
function consoleText(text) {
    return text
        .replace(/^%c%s color: darkcyan /, 'SEND ')
        .replace(/^%c%s color: darkgoldenrod /, 'RECV ')
        .replace(/^%c%s color: \S+ /, '');
}

// CSS attribute selector value, quoted.
function cssString(s) {
    return JSON.stringify(s);
}

async function pageState(page) {
    try {
        return await page.evaluate(() => {
            const s = window.palaverTest;
            return s ? { status: s.status, jid: s.jid, errors: s.errors, events: s.events } : null;
        });
    } catch (e) {
        return { evaluateError: String(e) };
    }
}

async function main() {
    let opts;
    try {
        opts = parseArgs(process.argv.slice(2));
    } catch (e) {
        out(`FAIL bad arguments: ${e.message}`);
        process.exit(2);
    }

    const userDataDir = mkdtempSync(join(tmpdir(), 'palaver-chromium-'));
    let context = null;
    let page = null;
    let finished = false;

    const cleanup = async () => {
        if (context) {
            await context.close().catch(() => {});
            context = null;
        }
        rmSync(userDataDir, { recursive: true, force: true });
    };

    const fail = async (reason) => {
        if (finished) return;
        finished = true;
        if (page) {
            const state = await pageState(page);
            err(`[driver] page state at failure: ${JSON.stringify(state)}`);
            if (opts.screenshot) {
                await page.screenshot({ path: opts.screenshot, fullPage: true }).catch(() => {});
                err(`[driver] screenshot: ${opts.screenshot}`);
            }
        }
        out(`FAIL ${reason}`);
        await cleanup();
        process.exit(1);
    };

    const timer = setTimeout(() => {
        fail(`timed out after ${opts.timeoutMs} ms during step "${step}"`);
    }, opts.timeoutMs);
    for (const sig of ['SIGTERM', 'SIGINT']) {
        process.on(sig, () => fail(`got ${sig} during step "${step}"`));
    }
    if (opts.watchStdin) {
        process.stdin.on('end', () => fail(`stdin closed (the test went away) during step "${step}"`));
        process.stdin.on('data', () => {});
        process.stdin.resume();
    }

    try {
        setStep('launch');
        context = await chromium.launchPersistentContext(userDataDir, {
            executablePath: CHROMIUM,
            headless: true,
            args: CHROMIUM_ARGS,
            viewport: { width: 1280, height: 800 },
        });
        page = context.pages()[0] ?? (await context.newPage());
        page.on('console', (m) => err(`[browser] ${m.type()}: ${consoleText(m.text())}`));
        page.on('pageerror', (e) => err(`[browser] page error: ${e.message}`));
        page.on('requestfailed', (r) => err(`[browser] request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText ?? ''}`));
        page.on('response', (r) => {
            if (r.status() >= 400) err(`[browser] HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
        });
        // BOSH goes to another origin than the page: report the CORS exchange of
        // the first POST so the test can check it.
        const bosh = new URL(opts.url).searchParams.get('bosh_service_url');
        if (bosh) {
            let reported = false;
            page.on('requestfinished', async (req) => {
                if (reported || req.method() !== 'POST' || !req.url().startsWith(bosh)) return;
                reported = true;
                const resp = await req.response();
                const origin = (await req.allHeaders())['origin'] ?? '-';
                const allow = resp ? ((await resp.allHeaders())['access-control-allow-origin'] ?? '-') : '-';
                out(`CORS origin=${origin} allow-origin=${allow}`);
            });
        }
        page.on('websocket', (ws) => {
            err(`[browser] websocket open ${ws.url()}`);
            ws.on('close', () => err(`[browser] websocket closed ${ws.url()}`));
        });

        setStep('load');
        const resp = await page.goto(opts.url, { waitUntil: 'load' });
        if (!resp || !resp.ok()) {
            return fail(`page load failed: HTTP ${resp ? resp.status() : 'no response'} for ${opts.url}`);
        }

        setStep('login');
        // Resolves when connected; fails fast on a disconnect or a page-side error.
        const handle = await page.waitForFunction(
            () => {
                const s = window.palaverTest;
                if (!s) return false;
                if (s.errors.length || s.status === 'error' || s.status === 'disconnected') {
                    return { failed: true, status: s.status, errors: s.errors, events: s.events };
                }
                if (s.status === 'connected' || s.status === 'chat-open') {
                    return { failed: false, jid: s.jid };
                }
                return false;
            },
            null,
            { timeout: 0, polling: 100 },
        );
        const login = await handle.jsonValue();
        if (login.failed) {
            return fail(`login failed: status ${login.status}; errors ${JSON.stringify(login.errors)}; events ${JSON.stringify(login.events)}`);
        }
        out(`CONNECTED ${login.jid}`);

        setStep('open-chat');
        const chat = opts.room
            ? page.locator(`converse-muc[jid=${cssString(opts.room)}]`)
            : page.locator(`converse-chat[jid=${cssString(opts.contact)}]`);
        const textarea = chat.locator('textarea.chat-textarea');
        await textarea.waitFor({ state: 'visible', timeout: 0 });

        setStep('send');
        await textarea.click();
        await textarea.pressSequentially(opts.send);
        await textarea.press('Enter');
        // Our own message is rendered once Converse has sent it.
        await chat.locator('.chat-msg__text', { hasText: opts.send }).first().waitFor({ timeout: 0 });
        out(`SENT ${opts.send}`);

        setStep('receive');
        const incoming = chat.locator('.chat-msg__text', { hasText: opts.expect }).first();
        await incoming.waitFor({ state: 'visible', timeout: 0 });
        const shown = (await incoming.innerText()).trim();
        if (shown !== opts.expect) {
            return fail(`chat view shows ${JSON.stringify(shown)}, expected ${JSON.stringify(opts.expect)}`);
        }
        out(`RECEIVED ${shown}`);

        if (opts.screenshot) {
            await page.screenshot({ path: opts.screenshot, fullPage: true });
            err(`[driver] screenshot: ${opts.screenshot}`);
        }
        clearTimeout(timer);
        finished = true;
        out('OK');
        await cleanup();
        process.exit(0);
    } catch (e) {
        clearTimeout(timer);
        await fail(`${step}: ${e && e.message ? e.message.split('\n')[0] : e}`);
    }
}

main();
