// dashboard.mjs - drive the dashboard that jobpoold serves at GET / in a real browser
// (Debian's /usr/bin/chromium through playwright-core, no browser download).
//
// Starts its own jobpoold (JOBPOOLD, default ../../build/server/jobpoold) on 127.0.0.1:0
// with a temp database, two workers and a token; opens the page without a token (it must
// say so), enters the token, submits a demo batch through the form and watches it finish
// live (Server-Sent Events, no reload), opens its detail, cancels a long batch with the
// button, and checks that there were no console errors and no failed requests. Saves
// screenshots in the temp dir. Ends with "browser: N passed, M failed"; exit 1 on failure.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const JOBPOOLD = resolve(process.env.JOBPOOLD ?? join(here, '../../build/server/jobpoold'));
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const TOKEN = 't0k';
const KEEP = process.env.KEEP_TMP === '1';
const tmp = mkdtempSync(join(tmpdir(), 'jobpool-browser-'));

let passed = 0;
let failed = 0;
function check(label, ok, detail = '') {
	if (ok) {
		passed++;
		console.log(`ok ${label}`);
	} else {
		failed++;
		console.log(`FAIL ${label}${detail ? `: ${detail}` : ''}`);
	}
	return ok;
}

let server = null;
let browser = null;
async function cleanup() {
	if (browser) await browser.close().catch(() => {});
	browser = null;
	if (server && server.exitCode === null && server.signalCode === null) {
		const gone = new Promise((r) => server.once('exit', r));
		server.kill('SIGTERM');
		const t = setTimeout(() => server.kill('SIGKILL'), 5000);
		await gone;
		clearTimeout(t);
	}
	if (!KEEP && failed === 0) rmSync(tmp, { recursive: true, force: true });
}
async function finish() {
	await cleanup();
	console.log(`browser: ${passed} passed, ${failed} failed`);
	process.exit(failed ? 1 : 0);
}
const deadline = setTimeout(async () => {
	check('whole test within 60 s', false, 'timed out');
	await finish();
}, 60000);

function startServer(listen = '127.0.0.1:0') {
	return new Promise((resolveP, reject) => {
		const args = ['--listen', listen, '--db', join(tmp, 'jobpool.db'), '--workers', '2',
			'--token', TOKEN, '--kill-grace-ms', '500'];
		server = spawn(JOBPOOLD, args, { stdio: ['ignore', 'ignore', 'pipe'] });
		let log = '';
		const t = setTimeout(() => reject(new Error(`no "listening on" line within 10 s:\n${log}`)), 10000);
		server.on('error', (e) => { clearTimeout(t); reject(e); });
		server.on('exit', (code, sig) => { clearTimeout(t); reject(new Error(`jobpoold exited (${code ?? sig}):\n${log}`)); });
		server.stderr.on('data', (d) => {
			log += d;
			const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
			if (m) { clearTimeout(t); resolveP(m[1]); }
		});
	});
}

// api calls the server directly (not through the page), for set-up and cross-checks.
async function api(base, path, opts = {}) {
	const res = await fetch(base + path, { ...opts, headers: { Authorization: `Bearer ${TOKEN}`, ...(opts.headers ?? {}) } });
	return { status: res.status, json: res.headers.get('content-type')?.includes('json') ? await res.json() : null };
}

async function main() {
	const base = await startServer();
	console.log(`# jobpoold at ${base}, temp dir ${tmp}`);

	browser = await chromium.launch({
		executablePath: CHROMIUM,
		headless: true,
		args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
			'--disable-background-networking', '--disable-component-update', '--disable-sync'],
	});
	const ctx = await browser.newContext({ viewport: { width: 1400, height: 900 } });
	const page = await ctx.newPage();

	// Everything that goes wrong in the page. Until the token is entered the page is expected
	// to get 401s (and Chromium logs each as a console error); after that, nothing.
	let phase = 'no-token';
	const problems = [];
	const unauthorized = [];
	page.on('console', (m) => {
		if (m.type() !== 'error') return;
		if (phase === 'no-token' && /status of 401/.test(m.text())) return;
		if (phase === 'restart' && /ERR_CONNECTION_REFUSED|ERR_INCOMPLETE_CHUNKED_ENCODING|ERR_EMPTY_RESPONSE/.test(m.text())) return;
		problems.push(`console (${phase}): ${m.text()}`);
	});
	page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
	page.on('requestfailed', (r) => {
		if (phase !== 'done' && phase !== 'restart') problems.push(`request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`);
	});
	page.on('response', (r) => {
		if (r.status() === 401 && phase === 'no-token') unauthorized.push(r.url());
		else if (r.status() >= 400) problems.push(`HTTP ${r.status()} ${r.request().method()} ${r.url()} (${phase})`);
	});
	let navigations = 0;
	page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations++; });

	// -- the page itself is public
	const resp = await page.goto(base + '/', { waitUntil: 'domcontentloaded' });
	check('GET / without a token is 200 text/html', resp.status() === 200 && /^text\/html/.test(resp.headers()['content-type'] ?? ''),
		`${resp.status()} ${resp.headers()['content-type']}`);
	check('page title', (await page.title()) === 'jobpool dashboard', await page.title());

	// -- no token: the page says it needs one
	await page.waitForSelector('#status[data-state="unauthorized"]', { timeout: 5000 }).catch(() => {});
	const st0 = await page.locator('#status').getAttribute('data-state');
	check('without a token the page reports 401 and asks for it', st0 === 'unauthorized' && await page.locator('#auth-msg').isVisible() &&
		unauthorized.length > 0, `status ${st0}, 401s ${unauthorized.length}`);

	// -- enter the token
	await page.fill('#token', TOKEN);
	phase = 'live';
	await page.click('#token-save');
	await page.waitForSelector('#status[data-state="live"]', { timeout: 5000 }).catch(() => {});
	check('with the token the event stream is live', (await page.locator('#status').getAttribute('data-state')) === 'live',
		await page.locator('#status').textContent());
	check('the token is kept in sessionStorage', (await page.evaluate(() => sessionStorage.getItem('jobpool.token'))) === TOKEN);
	await page.waitForSelector('#pool[data-size="2"] #pool-body tr[data-slot]', { timeout: 5000 }).catch(() => {});
	const slots = await page.locator('#pool-body tr[data-slot]').count();
	const pidsShown = await page.locator('#pool-body tr[data-slot] td:nth-child(2)').allTextContents();
	check('the pool shows 2 workers with pids', slots === 2 && (await page.locator('#pool').getAttribute('data-size')) === '2' &&
		pidsShown.every((p) => /^\d+$/.test(p.trim())), `rows ${slots}, pids ${pidsShown}`);
	check('no batches yet', await page.locator('#batches-empty').isVisible());

	// -- submit a demo batch through the form, and watch it finish without a reload
	await page.evaluate(() => { window.__noReload = 42; });
	await page.fill('#demo-n', '6');
	await page.fill('#demo-s', '0.3');
	await page.fill('#demo-c', '2');
	await page.click('#submit-demo');
	const row = page.locator('#batches-body tr[data-batch-id]').first();
	await row.waitFor({ timeout: 5000 }).catch(() => {});
	const id1 = await row.getAttribute('data-batch-id').catch(() => null);
	check('the submitted batch appears in the list', /^b_\d{12}$/.test(id1 ?? ''), String(id1));
	const r1 = page.locator(`tr[data-batch-id="${id1}"]`);
	const seen = new Set();
	const progress = new Set();
	const t0 = Date.now();
	while (Date.now() - t0 < 15000) {
		const [state, pct] = await Promise.all([r1.getAttribute('data-state'), r1.getAttribute('data-progress')]);
		seen.add(state);
		progress.add(pct);
		if (state === 'succeeded' && pct === '100') break;
		await page.waitForTimeout(40);
	}
	const finalState = await r1.getAttribute('data-state');
	const bar = await r1.locator('[role=progressbar]').getAttribute('aria-valuenow');
	check('the batch reaches 100% and succeeded, live', finalState === 'succeeded' && bar === '100',
		`state ${finalState}, progressbar ${bar}, seen ${[...seen]}`);
	check('it was seen in between (running, partial progress)', seen.has('running') &&
		[...progress].some((p) => p !== '0' && p !== '100'), `states ${[...seen]}, progress ${[...progress]}`);
	check('no reload happened', (await page.evaluate(() => window.__noReload)) === 42 && navigations === 1, `navigations ${navigations}`);
	await page.waitForFunction((id) => Number(document.querySelector(`tr[data-batch-id="${id}"]`)?.dataset.parallelism) > 1, id1,
		{ timeout: 3000 }).catch(() => {});
	const par = Number(await r1.getAttribute('data-parallelism'));
	const cells = await r1.locator('td').allTextContents();
	check('counts, makespan and parallelism shown', cells[3]?.startsWith('6 / 6') && /\d ms$/.test(cells[4] ?? '') && /^\d\.\d\d×$/.test(cells[5] ?? '') && par > 1.3 && par <= 2.05,
		`cells ${JSON.stringify(cells)}, parallelism ${par}`);
	const truth = await api(base, `/v1/batches/${id1}`);
	check('the server agrees', truth.json?.state === 'succeeded' && truth.json?.counts?.succeeded === 6, JSON.stringify(truth.json?.counts));

	// -- batch detail: six jobs in submission order
	await page.click(`tr[data-batch-id="${id1}"] button.open-batch`);
	await page.waitForSelector(`#detail[data-batch-id="${id1}"] #jobs-body tr[data-job-id]`, { timeout: 5000 }).catch(() => {});
	await page.waitForFunction(() => [...document.querySelectorAll('#jobs-body tr')].every((tr) => tr.dataset.state === 'succeeded'),
		null, { timeout: 3000 }).catch(() => {});
	const jobRows = await page.locator('#jobs-body tr[data-job-id]').evaluateAll((trs) => trs.map((tr) => ({
		id: tr.dataset.jobId, index: tr.dataset.index, state: tr.dataset.state, cells: [...tr.cells].map((c) => c.textContent),
	})));
	const apiJobs = (await api(base, `/v1/batches/${id1}/jobs`)).json?.items ?? [];
	check('detail lists 6 jobs in submission order', jobRows.length === 6 && jobRows.every((j, i) => j.index === String(i) && j.id === apiJobs[i]?.id),
		JSON.stringify(jobRows.map((j) => [j.index, j.id])));
	check('each job succeeded with run time, queue time and worker pid', jobRows.every((j) => j.state === 'succeeded' &&
		/^(2|3)\d\d ms$/.test(j.cells[5]) && /ms|s$/.test(j.cells[4]) && /^\d+$/.test(j.cells[7])),
		JSON.stringify(jobRows.map((j) => j.cells)));
	check('no Cancel button for a finished batch', !(await page.locator('#cancel-batch').isVisible()));
	await page.screenshot({ path: join(tmp, 'dashboard.png'), fullPage: true });

	// -- a long batch, canceled with the button
	await page.fill('#demo-n', '2');
	await page.fill('#demo-s', '60');
	await page.fill('#demo-c', '1');
	await page.click('#submit-demo');
	await page.waitForFunction((old) => {
		const id = document.querySelector('#detail')?.dataset.batchId;
		return id && id !== old;
	}, id1, { timeout: 5000 }).catch(() => {});
	const id2 = await page.locator('#detail').getAttribute('data-batch-id');
	check('the new batch is listed first and shown in detail', id2 !== id1 &&
		(await page.locator('#batches-body tr[data-batch-id]').first().getAttribute('data-batch-id')) === id2, `${id2}`);
	await page.waitForSelector(`tr[data-batch-id="${id2}"][data-state="running"]`, { timeout: 5000 }).catch(() => {});
	await page.waitForSelector('#jobs-body tr[data-index="0"][data-state="running"]', { timeout: 5000 }).catch(() => {});
	check('the long batch is running (live)', (await page.locator('#jobs-body tr[data-index="0"]').getAttribute('data-state')) === 'running');
	await page.waitForSelector('#pool[data-busy="1"]', { timeout: 3000 }).catch(() => {});
	check('the pool shows one busy worker', (await page.locator('#pool').getAttribute('data-busy')) === '1' &&
		(await page.locator('#pool-body tr[data-state="busy"]').count()) === 1);
	check('Cancel button visible', await page.locator('#cancel-batch').isVisible());
	await page.click('#cancel-batch');
	await page.waitForSelector(`tr[data-batch-id="${id2}"][data-state="canceled"]`, { timeout: 5000 }).catch(() => {});
	await page.waitForFunction(() => [...document.querySelectorAll('#jobs-body tr')].every((tr) => tr.dataset.state === 'canceled'),
		null, { timeout: 3000 }).catch(() => {});
	const st2 = await page.locator(`tr[data-batch-id="${id2}"]`).getAttribute('data-state');
	const js2 = await page.locator('#jobs-body tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.state));
	check('the canceled batch shows canceled, with its jobs', st2 === 'canceled' && js2.length === 2 && js2.every((s) => s === 'canceled'),
		`batch ${st2}, jobs ${js2}`);
	check('Cancel button gone after cancel', !(await page.locator('#cancel-batch').isVisible()));
	await page.waitForFunction(() => document.querySelectorAll('#pool-body tr[data-state="idle"]').length === 2, null, { timeout: 5000 }).catch(() => {});
	check('the pool is back to 2 idle workers', (await page.locator('#pool-body tr[data-state="idle"]').count()) === 2);

	// -- keyboard: the batch buttons are reachable and open the detail
	await page.locator(`tr[data-batch-id="${id1}"] button.open-batch`).focus();
	await page.keyboard.press('Enter');
	await page.waitForSelector(`#detail[data-batch-id="${id1}"]`, { timeout: 3000 }).catch(() => {});
	check('keyboard opens a batch', (await page.locator('#detail').getAttribute('data-batch-id')) === id1);
	const labelled = await page.evaluate(() => [...document.querySelectorAll('input')].every((i) => i.labels && i.labels.length > 0));
	check('every input has a label', labelled);

	// -- the server restarts under the page: the stream drops, the page reconnects after 1 s
	// with Last-Event-ID, gets `event: reset` (a restart empties the server's event window)
	// and re-reads everything; a batch submitted elsewhere then shows up live.
	phase = 'restart';
	const eventRequests = [];
	page.on('request', (r) => { if (r.url().endsWith('/v1/events')) eventRequests.push(r.headers()['last-event-id'] ?? null); });
	const lastSeen = await page.locator('#last-event').textContent();
	const old = server;
	const exited = new Promise((r) => old.once('exit', r));
	old.kill('SIGTERM');
	await exited;
	await page.waitForSelector('#status[data-state="reconnecting"]', { timeout: 5000 }).catch(() => {});
	check('the page notices the dropped stream', (await page.locator('#status').getAttribute('data-state')) === 'reconnecting');
	await startServer(base.replace('http://', ''));
	await page.waitForSelector('#status[data-state="live"]', { timeout: 8000 }).catch(() => {});
	check('it reconnects', (await page.locator('#status').getAttribute('data-state')) === 'live');
	check('the reconnect sends Last-Event-ID', eventRequests.length > 0 && eventRequests.at(-1) === lastSeen.trim(),
		`sent ${JSON.stringify(eventRequests)}, last seen ${lastSeen}`);
	phase = 'after-restart';
	const sub = await api(base, '/v1/batches', { method: 'POST', headers: { 'Content-Type': 'application/json' },
		body: JSON.stringify({ name: 'from curl', jobs: [{ kind: 'noop' }, { kind: 'noop' }] }) });
	const id3 = sub.json?.id;
	await page.waitForSelector(`tr[data-batch-id="${id3}"][data-state="succeeded"]`, { timeout: 5000 }).catch(() => {});
	check('a batch submitted elsewhere appears live after the restart',
		(await page.locator(`tr[data-batch-id="${id3}"]`).getAttribute('data-state').catch(() => null)) === 'succeeded', String(id3));
	await page.waitForFunction(() => document.querySelectorAll('#pool-body tr[data-state="idle"]').length === 2, null, { timeout: 5000 }).catch(() => {});
	const pids = await page.locator('#pool-body tr[data-slot] td:nth-child(2)').allTextContents();
	const apiPids = ((await api(base, '/v1/pool')).json?.workers ?? []).map((w) => String(w.pid));
	check('the pool shows the new server\'s workers', pids.length === 2 && pids.every((p) => apiPids.includes(p.trim())),
		`page ${pids}, server ${apiPids}`);

	await page.screenshot({ path: join(tmp, 'dashboard-final.png'), fullPage: true });
	phase = 'done';
	check('no console errors, page errors, failed or error requests', problems.length === 0, problems.join(' | '));
	console.log(`# screenshots: ${join(tmp, 'dashboard.png')} ${join(tmp, 'dashboard-final.png')}`);
}

main().catch((e) => {
	check('internal error', false, e.stack ?? String(e));
}).finally(async () => {
	clearTimeout(deadline);
	await finish();
});
