#!/usr/bin/env node
// contract.mjs - run the real jobpoold and check every answer against openapi.yaml.
//
//   cd tests/contract && node contract.mjs
//
// Starts jobpoold (env JOBPOOLD, default ../../build/server/jobpoold relative to this
// script) on 127.0.0.1 port 0 with a fresh database, plus helper servers for the
// body-size and queue limits (--max-body-bytes 2048 --max-queued-jobs 1) and for auth
// and CORS (--token, --cors-origin). It drives every endpoint on success and error
// paths; for each response it finds the operation in openapi.yaml by path template and
// method and the response by status (or `default`), then checks that the status is
// documented, the Content-Type is a documented media type, every required response
// header is present (and matches its schema), and a JSON body validates against the
// schema (Ajv, JSON Schema 2020-12, strict, allErrors). Scenario assertions (expected
// status, replayed id, history length, ...) are part of the same check.
// Prints `ok METHOD PATH STATUS` or `FAIL METHOD PATH STATUS: reasons` per check and
// ends with `contract: N passed, M failed`; exit 1 when M > 0. Servers it started are
// killed by PID on exit; the whole run is bounded by a 60 s timeout.
//
// Needs Node >= 20 and the npm packages yaml, ajv, ajv-formats (package.json).
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

const here = dirname(fileURLToPath(import.meta.url));
const SPEC_PATH = process.env.OPENAPI ?? join(here, '../../openapi.yaml');
const SERVER_BIN = resolvePath(process.env.JOBPOOLD ?? join(here, '../../build/server/jobpoold'));
const OVERALL_TIMEOUT_MS = 60_000;
const TOKEN = 'contract-test-token';
const ORIGIN = 'http://app.example.test';

// ---- spec and validators --------------------------------------------------------------

const spec = parse(readFileSync(SPEC_PATH, 'utf8'));
const SCHEMA_PREFIX = '#/components/schemas/';

function rewriteRefs(node) {
	if (Array.isArray(node)) return node.map(rewriteRefs);
	if (node === null || typeof node !== 'object') return node;
	const out = {};
	for (const [k, v] of Object.entries(node)) {
		if (k === '$ref' && typeof v === 'string') {
			if (!v.startsWith(SCHEMA_PREFIX)) throw new Error(`unsupported $ref ${v}`);
			const rest = v.slice(SCHEMA_PREFIX.length);
			const slash = rest.indexOf('/');
			out[k] = slash < 0 ? `oas:${rest}` : `oas:${rest.slice(0, slash)}#${rest.slice(slash)}`;
		} else out[k] = rewriteRefs(v);
	}
	return out;
}

// deref follows local $refs of any component kind.
function deref(node) {
	while (node && typeof node === 'object' && typeof node.$ref === 'string') {
		const ref = node.$ref;
		node = ref.slice(2).split('/')
			.map((p) => decodeURIComponent(p).replace(/~1/g, '/').replace(/~0/g, '~'))
			.reduce((o, k) => (o === undefined ? undefined : o[k]), spec);
		if (node === undefined) throw new Error(`dangling $ref ${ref}`);
	}
	return node;
}

const ajv = new Ajv2020({ allErrors: true, strict: true, allowUnionTypes: true });
addFormats(ajv);
ajv.addVocabulary(['example', 'discriminator', 'xml', 'externalDocs']);
for (const [name, schema] of Object.entries(spec.components?.schemas ?? {}))
	ajv.addSchema(rewriteRefs(schema), `oas:${name}`);

const compiled = new Map();
function validatorFor(schema) {
	if (compiled.has(schema)) return compiled.get(schema);
	const s = rewriteRefs(schema);
	const v = typeof s.$ref === 'string' && Object.keys(s).length === 1 ? ajv.getSchema(s.$ref) : ajv.compile(s);
	compiled.set(schema, v);
	return v;
}
const ajvErrors = (v) => v.errors.map((e) => `${e.instancePath || '/'} ${e.message}${e.params?.additionalProperty ? ` (${e.params.additionalProperty})` : ''}`).join('; ');

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
const templates = Object.keys(spec.paths).map((t) => ({
	t,
	re: new RegExp('^' + t.replace(/[.]/g, '\\.').replace(/\{[^}]+\}/g, '[^/]+') + '$'),
	literal: !t.includes('{'),
}));
function findTemplate(path) {
	const m = templates.filter((x) => x.re.test(path));
	return (m.find((x) => x.literal) ?? m[0])?.t;
}

// ---- results ----------------------------------------------------------------------------

let passed = 0;
let failed = 0;
function report(label, problems) {
	if (problems.length === 0) {
		passed++;
		console.log(`ok ${label}`);
	} else {
		failed++;
		console.log(`FAIL ${label}: ${problems.join(' | ')}`);
	}
}

// validate checks one response against the spec; returns a list of problems.
function validate(method, url, res) {
	const problems = [];
	const path = url.split('?')[0];
	const template = findTemplate(path);
	let response;
	const status = String(res.status);
	if (!template) {
		// Unknown path: only the generic 404 exists for it.
		if (res.status !== 404) return [`path ${path} is not in the spec`];
		response = deref(spec.components.responses.NotFound);
	} else {
		const item = spec.paths[template];
		const op = item[method.toLowerCase()];
		if (!op) {
			// A method the path does not have: the generic 405 with Allow.
			if (res.status !== 405) return [`${method} ${template} is not in the spec`];
			response = deref(spec.components.responses.MethodNotAllowed);
			const allow = (res.headers.allow ?? '').split(',').map((s) => s.trim().toUpperCase());
			for (const m of METHODS)
				if (item[m] && m !== 'options' && !allow.includes(m.toUpperCase()))
					problems.push(`Allow "${res.headers.allow ?? ''}" lacks ${m.toUpperCase()}`);
		} else {
			const rs = op.responses ?? {};
			const r = rs[status] ?? rs[`${status[0]}XX`] ?? rs.default;
			if (!r) return [`status ${status} is not documented for ${method} ${template}`];
			response = deref(r);
		}
	}
	// headers
	for (const [name, h0] of Object.entries(response.headers ?? {})) {
		const h = deref(h0);
		const v = res.headers[name.toLowerCase()];
		if (v === undefined) {
			if (h.required) problems.push(`missing header ${name}`);
			continue;
		}
		if (h.schema) {
			const hv = validatorFor(h.schema);
			if (!hv(v)) problems.push(`header ${name}: "${v}" ${ajvErrors(hv)}`);
		}
	}
	// content
	const ctype = (res.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
	const content = response.content;
	if (!content) {
		if (res.body.length > 0) problems.push(`no body documented, got ${res.body.length} bytes (${ctype})`);
		return problems;
	}
	const media = content[ctype];
	if (!media) {
		problems.push(`content-type "${res.headers['content-type'] ?? ''}" not in [${Object.keys(content).join(', ')}]`);
		return problems;
	}
	if (!(ctype === 'application/json' || ctype.endsWith('+json'))) return problems; // text, yaml, SSE
	let body;
	try {
		body = JSON.parse(res.body);
	} catch (e) {
		problems.push(`body is not JSON: ${e.message}`);
		return problems;
	}
	res.json = body;
	if (media.schema) {
		const v = validatorFor(media.schema);
		if (!v(body)) problems.push(`body: ${ajvErrors(v)}`);
	}
	return problems;
}

// ---- HTTP -------------------------------------------------------------------------------

function http(port, method, path, { headers = {}, body, json, timeoutMs = 15000 } = {}) {
	return new Promise((resolveP) => {
		const hdrs = { ...headers };
		let payload = body;
		if (json !== undefined) {
			payload = JSON.stringify(json);
			if (!Object.keys(hdrs).some((k) => k.toLowerCase() === 'content-type'))
				hdrs['Content-Type'] = 'application/json';
		}
		if (payload !== undefined) hdrs['Content-Length'] = Buffer.byteLength(payload);
		const req = request({ host: '127.0.0.1', port, method, path, headers: hdrs, timeout: timeoutMs }, (res) => {
			const chunks = [];
			res.on('data', (c) => chunks.push(c));
			res.on('end', () => resolveP({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
			res.on('error', (e) => resolveP({ status: 0, headers: {}, body: '', error: e.message }));
		});
		req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
		req.on('error', (e) => resolveP({ status: 0, headers: {}, body: '', error: e.message }));
		if (payload !== undefined) req.write(payload);
		req.end();
	});
}

// call sends a request, validates the answer against the spec and the expected status,
// runs extra assertions (a function returning a list of problems), and reports.
async function call(srv, method, path, opts = {}) {
	const { expect, check, label } = opts;
	if (!srv.port) {
		report(`${method} ${path} ${expect ?? ''}`.trim(), [`server "${srv.name}" is not running: ${srv.error ?? 'not started'}`]);
		return { status: 0, headers: {}, body: '' };
	}
	const res = await http(srv.port, method, path, opts);
	const problems = [];
	if (res.error) problems.push(`request failed: ${res.error}`);
	else {
		const expected = Array.isArray(expect) ? expect : expect === undefined ? [] : [expect];
		if (expected.length && !expected.includes(res.status)) problems.push(`expected status ${expected.join(' or ')}`);
		problems.push(...validate(method, path, res));
		if (check) {
			try {
				problems.push(...(check(res) ?? []));
			} catch (e) {
				problems.push(`assertion threw: ${e.message}`);
			}
		}
	}
	if (res.status !== 200 && res.status !== 201 && res.status !== 204 && res.json?.detail && problems.length)
		problems.push(`server said: ${res.json.detail}`);
	report(label ?? `${method} ${path} ${res.status}`, problems);
	return res;
}

const want = (cond, msg) => (cond ? [] : [msg]);

// ---- servers ----------------------------------------------------------------------------

const servers = [];
const tmp = mkdtempSync(join(tmpdir(), 'jobpool-contract-'));

function startServer(name, extra) {
	const srv = { name, port: 0, child: null, log: [] };
	servers.push(srv);
	const args = ['--listen', '127.0.0.1:0', '--db', join(tmp, `${name}.db`), '--workers', '2', '--allow-command', ...extra];
	return new Promise((resolveP) => {
		let child;
		try {
			child = spawn(SERVER_BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
		} catch (e) {
			srv.error = e.message;
			resolveP(srv);
			return;
		}
		srv.child = child;
		let buf = '';
		const timer = setTimeout(() => {
			srv.error = `no "listening on" line within 10 s; stderr: ${srv.log.slice(-3).join(' / ')}`;
			resolveP(srv);
		}, 10000);
		child.stderr.setEncoding('utf8');
		child.stderr.on('data', (d) => {
			buf += d;
			let nl;
			while ((nl = buf.indexOf('\n')) >= 0) {
				const line = buf.slice(0, nl);
				buf = buf.slice(nl + 1);
				srv.log.push(line);
				if (srv.log.length > 200) srv.log.shift();
				const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(line);
				if (m && !srv.port) {
					srv.port = Number(m[1]);
					clearTimeout(timer);
					resolveP(srv);
				}
			}
		});
		child.on('error', (e) => {
			srv.error = e.message;
			clearTimeout(timer);
			resolveP(srv);
		});
		child.on('exit', (code, sig) => {
			srv.exited = true;
			if (!srv.port) {
				srv.error = `exited (${code ?? sig}) before listening; stderr: ${srv.log.slice(-3).join(' / ')}`;
				clearTimeout(timer);
				resolveP(srv);
			}
		});
	});
}

function killServers() {
	for (const s of servers)
		if (s.child?.pid && !s.exited) {
			try {
				process.kill(s.child.pid, 'SIGKILL');
			} catch { /* gone */ }
		}
	try {
		rmSync(tmp, { recursive: true, force: true });
	} catch { /* best effort */ }
}

async function stopServers() {
	const alive = servers.filter((s) => s.child?.pid && !s.exited);
	for (const s of alive) {
		try {
			process.kill(s.child.pid, 'SIGTERM');
		} catch { /* gone */ }
	}
	const deadline = Date.now() + 3000;
	while (Date.now() < deadline && alive.some((s) => !s.exited)) await sleep(50);
	killServers();
}

function finish(code) {
	console.log(`contract: ${passed} passed, ${failed} failed`);
	killServers();
	process.exit(code ?? (failed > 0 ? 1 : 0));
}

process.on('exit', killServers);
for (const sig of ['SIGINT', 'SIGTERM'])
	process.on(sig, () => {
		console.log(`FAIL interrupted by ${sig}`);
		failed++;
		finish(1);
	});
const overall = setTimeout(() => {
	console.log(`FAIL overall timeout of ${OVERALL_TIMEOUT_MS / 1000} s exceeded`);
	failed++;
	finish(1);
}, OVERALL_TIMEOUT_MS);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- SSE --------------------------------------------------------------------------------

// openEvents opens GET /v1/events, waits for the status line, and returns a handle that
// collects parsed events: {status, headers, events, next(timeoutMs), close()}.
function openEvents(port, path, headers = {}) {
	return new Promise((resolveP) => {
		const handle = { events: [], waiters: [], raw: '' };
		const req = request({ host: '127.0.0.1', port, method: 'GET', path, headers: { Accept: 'text/event-stream', ...headers } }, (res) => {
			handle.status = res.statusCode;
			handle.headers = res.headers;
			res.setEncoding('utf8');
			let buf = '';
			res.on('data', (d) => {
				handle.raw += d;
				buf += d.replace(/\r\n?/g, '\n');
				let sep;
				while ((sep = buf.indexOf('\n\n')) >= 0) {
					const block = buf.slice(0, sep);
					buf = buf.slice(sep + 2);
					const ev = { event: 'message', data: [], id: undefined };
					let any = false;
					for (const line of block.split('\n')) {
						if (line === '' || line.startsWith(':')) continue;
						const i = line.indexOf(':');
						const f = i < 0 ? line : line.slice(0, i);
						let v = i < 0 ? '' : line.slice(i + 1);
						if (v.startsWith(' ')) v = v.slice(1);
						any = true;
						if (f === 'event') ev.event = v;
						else if (f === 'data') ev.data.push(v);
						else if (f === 'id') ev.id = v;
					}
					if (!any) continue;
					ev.data = ev.data.join('\n');
					handle.events.push(ev);
					handle.waiters.splice(0).forEach((w) => w());
				}
			});
			res.on('error', () => {});
			resolveP(handle);
		});
		req.on('error', (e) => {
			handle.status = 0;
			handle.error = e.message;
			resolveP(handle);
		});
		req.setTimeout(5000, () => {
			if (handle.status === undefined) req.destroy(new Error('no answer within 5 s'));
		});
		req.end();
		handle.close = () => req.destroy();
		handle.waitFor = async (n, ms) => {
			const deadline = Date.now() + ms;
			while (handle.events.length < n && Date.now() < deadline)
				await new Promise((r) => {
					handle.waiters.push(r);
					setTimeout(r, Math.max(1, deadline - Date.now()));
				});
			return handle.events.length >= n;
		};
	});
}

// ---- scenario ---------------------------------------------------------------------------

const isTerminal = (s) => ['succeeded', 'failed', 'timed_out', 'canceled'].includes(s);

async function main() {
	console.log(`# server ${SERVER_BIN}, spec ${SPEC_PATH}`);
	const [S, L, A] = await Promise.all([
		startServer('main', ['--webhook-allow', '127.0.0.2']),
		startServer('limits', ['--max-body-bytes', '2048', '--max-queued-jobs', '1']),
		startServer('auth', ['--token', TOKEN, '--cors-origin', ORIGIN]),
	]);
	for (const s of [S, L, A]) if (!s.port) console.log(`# server ${s.name} did not start: ${s.error}`);
	if (!S.port) {
		report('start main server', [S.error ?? 'not started']);
		finish(1);
	}

	// -- health, readiness, meta
	await call(S, 'GET', '/healthz', { expect: 200, check: (r) => want(r.json?.status === 'ok', 'status is not ok') });
	let ready;
	for (let i = 0; i < 50; i++) {
		ready = await http(S.port, 'GET', '/readyz');
		if (ready.status === 200) break;
		await sleep(100);
	}
	await call(S, 'GET', '/readyz', { expect: 200, check: (r) => want(r.json?.status === 'ready', 'status is not ready') });
	await call(S, 'GET', '/openapi.yaml', {
		expect: 200,
		check: (r) => {
			try {
				return want(parse(r.body)?.openapi?.startsWith('3.1'), 'served document is not OpenAPI 3.1');
			} catch (e) {
				return [`served document is not YAML: ${e.message}`];
			}
		},
	});
	await call(S, 'POST', '/healthz', { expect: 405, json: {} , label: 'POST /healthz 405' });
	await call(S, 'GET', '/', {
		expect: 200,
		check: (r) => want(/^text\/html/.test(r.headers['content-type'] ?? '') && r.body.includes('<title>jobpool dashboard</title>'),
			`not the dashboard page (${r.headers['content-type']})`),
	});
	await call(S, 'POST', '/', { expect: 405, json: {}, label: 'POST / 405' });
	await call(S, 'GET', '/v1/nope', { expect: 404 });
	await call(S, 'GET', '/v1/batches/b_999999999999', { expect: 404 });
	await call(S, 'GET', '/v1/batches/xyz', { expect: 404 });
	await call(S, 'GET', '/v1/jobs/xyz', { expect: 404 });
	await call(S, 'GET', '/v1/jobs/j_999999999999', { expect: 404 });
	await call(S, 'GET', '/v1/batches/b_999999999999/jobs', { expect: 404 });
	await call(S, 'GET', '/v1/batches/b_999999999999/joblog', { expect: 404 });
	await call(S, 'POST', '/v1/batches/b_999999999999/cancel', { expect: 404 });
	await call(S, 'POST', '/v1/jobs/j_999999999999/cancel', { expect: 404 });
	await call(S, 'DELETE', '/v1/batches/b_999999999999', { expect: 404 });

	// -- submission, idempotency
	const batchA = {
		name: 'contract-a',
		concurrency: 2,
		priority: 5,
		jobs: [
			{ kind: 'noop' },
			{ kind: 'echo', args: { value: { a: [1, 2, { b: null }] } }, name: 'echo' },
			{ kind: 'sleep', args: { seconds: 0.05 } },
			{ kind: 'primes', args: { below: 1000 } },
			{ kind: 'matmul', args: { n: 8, seed: 1 } },
			{ kind: 'fail', args: { mode: 'exit', code: 3 }, max_attempts: 2, retry_on: [3], retry_backoff_s: 0 },
		],
	};
	const key = 'contract-key-1';
	const created = await call(S, 'POST', '/v1/batches', {
		expect: 201, json: batchA, headers: { 'Idempotency-Key': key },
		check: (r) => [
			...want(r.headers.location === `/v1/batches/${r.json?.id}`, `Location ${r.headers.location} does not name the batch`),
			...want(r.json?.job_ids?.length === 6, 'job_ids does not hold 6 ids'),
		],
	});
	const A_ID = created.json?.id;
	const A_JOBS = created.json?.job_ids ?? [];
	// Same key, same body with members in another order: a replay.
	const reordered = { jobs: batchA.jobs.map((j) => Object.fromEntries(Object.entries(j).reverse())), priority: 5, concurrency: 2, name: 'contract-a' };
	await call(S, 'POST', '/v1/batches', {
		expect: 200, json: reordered, headers: { 'Idempotency-Key': key }, label: 'POST /v1/batches 200 (Idempotency-Key replay)',
		check: (r) => [
			...want(r.json?.id === A_ID, `replay answered ${r.json?.id}, not ${A_ID}`),
			...want(JSON.stringify(r.json?.job_ids) === JSON.stringify(A_JOBS), 'replay job_ids differ'),
			...want(r.headers.location === `/v1/batches/${A_ID}`, `replay Location ${r.headers.location}`),
		],
	});
	await call(S, 'POST', '/v1/batches', {
		expect: 409, json: { jobs: [{ kind: 'noop' }] }, headers: { 'Idempotency-Key': key }, label: 'POST /v1/batches 409 (key reused with another body)',
		check: (r) => want(r.json?.type === 'urn:jobpool:problem:conflict', 'type is not conflict'),
	});
	await call(S, 'POST', '/v1/batches', {
		expect: 400, json: { jobs: [{ kind: 'noop' }] }, headers: { 'Idempotency-Key': 'k'.repeat(256) }, label: 'POST /v1/batches 400 (bad Idempotency-Key)',
		check: (r) => want(r.json?.errors?.some((e) => e.path === 'Idempotency-Key'), 'no error at Idempotency-Key'),
	});
	await call(S, 'POST', '/v1/batches', {
		expect: 400, body: '{"jobs": [', headers: { 'Content-Type': 'application/json' }, label: 'POST /v1/batches 400 (invalid-json)',
		check: (r) => want(r.json?.type === 'urn:jobpool:problem:invalid-json', `type ${r.json?.type}`),
	});
	await call(S, 'POST', '/v1/batches', {
		expect: 400, label: 'POST /v1/batches 400 (invalid-request)',
		json: { concurrency: 0, bogus: 1, jobs: [{ kind: 'sleep', args: { seconds: -1 } }, { kind: 'nope' }, { kind: 'noop', extra: true }] },
		check: (r) => {
			const paths = (r.json?.errors ?? []).map((e) => e.path);
			return [
				...want(r.json?.type === 'urn:jobpool:problem:invalid-request', `type ${r.json?.type}`),
				...['/concurrency', '/bogus', '/jobs/0/args/seconds', '/jobs/1/kind'].filter((p) => !paths.includes(p)).map((p) => `no error at ${p} (got ${paths.join(', ')})`),
			];
		},
	});
	await call(S, 'POST', '/v1/batches', {
		expect: 400, json: { jobs: [] }, label: 'POST /v1/batches 400 (no jobs)',
	});

	await call(S, 'POST', '/v1/batches', {
		expect: 415, body: '{"jobs":[{"kind":"noop"}]}', headers: { 'Content-Type': 'text/plain' }, label: 'POST /v1/batches 415',
		check: (r) => want(r.json?.type === 'urn:jobpool:problem:unsupported-media-type', `type ${r.json?.type}`),
	});
	await call(S, 'PATCH', '/v1/batches', { expect: 405, json: {}, label: 'PATCH /v1/batches 405' });
	await call(S, 'PUT', `/v1/batches/${A_ID}`, { expect: 405, json: {}, label: 'PUT /v1/batches/{id} 405' });
	await call(S, 'GET', `/v1/batches/${A_ID}/cancel`, { expect: 405, label: 'GET /v1/batches/{id}/cancel 405' });

	// -- command jobs
	const cmd = await call(S, 'POST', '/v1/batches', {
		expect: 201, label: 'POST /v1/batches 201 (command jobs)',
		json: {
			name: 'commands',
			jobs: [
				{ kind: 'command', args: { argv: ['sh', '-c', 'echo "$GREETING"; echo oops >&2'], env: { GREETING: 'hello' } } },
				{ kind: 'command', args: { argv: ['sh', '-c', 'cat; exit 4'], stdin: 'in' } },
			],
		},
	});
	const [CMD_OK, CMD_FAIL] = cmd.json?.job_ids ?? [];

	// -- long-poll until terminal
	await call(S, 'GET', `/v1/batches/${A_ID}?wait=20`, {
		expect: 200, label: `GET /v1/batches/{id}?wait=20 200 (A)`,
		check: (r) => [
			...want(r.json?.state === 'failed', `batch state ${r.json?.state}, want failed (its fail job fails twice)`),
			...want(r.json?.counts?.succeeded === 5 && r.json?.counts?.failed === 1, `counts ${JSON.stringify(r.json?.counts)}`),
		],
	});
	await call(S, 'GET', `/v1/jobs/${A_JOBS[5]}?wait=10`, {
		expect: 200, label: 'GET /v1/jobs/{id}?wait=10 200 (retried fail job)',
		check: (r) => [
			...want(r.json?.state === 'failed' && r.json?.exit_code === 3, `state ${r.json?.state} exit_code ${r.json?.exit_code}`),
			...want(r.json?.attempts === 2, `attempts ${r.json?.attempts}, want 2`),
			...want(r.json?.history?.length === 2 && r.json.history.every((h) => h.state === 'failed' && h.exit_code === 3), `history ${JSON.stringify(r.json?.history)}`),
		],
	});
	await call(S, 'GET', `/v1/jobs/${A_JOBS[1]}`, {
		expect: 200, label: 'GET /v1/jobs/{id} 200 (echo)',
		check: (r) => [
			...want(JSON.stringify(r.json?.result) === JSON.stringify({ value: { a: [1, 2, { b: null }] } }), `result ${JSON.stringify(r.json?.result)}`),
			...want(r.json?.output === null, 'output of a non-command job is not null'),
		],
	});
	await call(S, 'GET', `/v1/jobs/${CMD_OK}?wait=10`, {
		expect: 200, label: 'GET /v1/jobs/{id}?wait=10 200 (command job)',
		check: (r) => [
			...want(r.json?.state === 'succeeded', `state ${r.json?.state} (${r.json?.error})`),
			...want(JSON.stringify(r.json?.output) === JSON.stringify({ stdout: 'hello\n', stderr: 'oops\n', truncated: false }), `output ${JSON.stringify(r.json?.output)}`),
			...want(r.json?.result?.exit_code === 0, `result ${JSON.stringify(r.json?.result)}`),
		],
	});
	await call(S, 'GET', `/v1/jobs/${CMD_FAIL}?wait=10`, {
		expect: 200, label: 'GET /v1/jobs/{id}?wait=10 200 (failing command job)',
		check: (r) => [
			...want(r.json?.state === 'failed' && r.json?.exit_code === 4, `state ${r.json?.state} exit_code ${r.json?.exit_code}`),
			...want(r.json?.output?.stdout === 'in', `output ${JSON.stringify(r.json?.output)}`),
		],
	});
	await call(S, 'GET', `/v1/batches/${A_ID}?wait=abc`, { expect: 400, label: 'GET /v1/batches/{id}?wait=abc 400' });
	await call(S, 'GET', `/v1/jobs/${A_JOBS[0]}?wait=3601`, { expect: 400, label: 'GET /v1/jobs/{id}?wait=3601 400' });

	// -- lists and pagination
	await call(S, 'GET', '/v1/batches', {
		expect: 200, check: (r) => want(r.json?.items?.length === 2 && r.json.next_cursor === null, `items ${r.json?.items?.length}, next_cursor ${r.json?.next_cursor}`),
	});
	const p1 = await call(S, 'GET', '/v1/batches?limit=1', {
		expect: 200, label: 'GET /v1/batches?limit=1 200',
		check: (r) => want(r.json?.items?.length === 1 && typeof r.json.next_cursor === 'string', 'no next_cursor on a first page of 1'),
	});
	await call(S, 'GET', `/v1/batches?limit=1&after=${encodeURIComponent(p1.json?.next_cursor ?? '')}`, {
		expect: 200, label: 'GET /v1/batches?limit=1&after= 200',
		check: (r) => [
			...want(r.json?.items?.[0]?.id === A_ID, `second page holds ${r.json?.items?.[0]?.id}, want ${A_ID} (newest first)`),
			...want(r.json?.next_cursor === null, 'last page has a next_cursor'),
		],
	});
	await call(S, 'GET', '/v1/batches?state=failed', { expect: 200, label: 'GET /v1/batches?state=failed 200' });
	await call(S, 'GET', '/v1/batches?limit=1.0', { expect: 200, label: 'GET /v1/batches?limit=1.0 200 (an integral decimal is an integer)', check: (r) => want(r.json?.items?.length === 1, `items ${r.json?.items?.length}`) });
	await call(S, 'GET', '/v1/batches?limit=1.5', { expect: 400, label: 'GET /v1/batches?limit=1.5 400', check: (r) => want(r.json?.errors?.some((e) => e.path === '?limit'), 'no error at ?limit') });
	await call(S, 'GET', '/v1/batches?limit=0', { expect: 400, label: 'GET /v1/batches?limit=0 400', check: (r) => want(r.json?.errors?.some((e) => e.path === '?limit'), 'no error at ?limit') });
	await call(S, 'GET', '/v1/batches?state=bogus', { expect: 400, label: 'GET /v1/batches?state=bogus 400' });
	const j1 = await call(S, 'GET', `/v1/batches/${A_ID}/jobs?limit=4`, {
		expect: 200, label: 'GET /v1/batches/{id}/jobs?limit=4 200',
		check: (r) => [
			...want(r.json?.items?.map((j) => j.index).join() === '0,1,2,3', `indexes ${r.json?.items?.map((j) => j.index)}`),
			...want(typeof r.json?.next_cursor === 'string', 'no next_cursor'),
		],
	});
	await call(S, 'GET', `/v1/batches/${A_ID}/jobs?limit=4&after=${encodeURIComponent(j1.json?.next_cursor ?? '')}`, {
		expect: 200, label: 'GET /v1/batches/{id}/jobs?limit=4&after= 200',
		check: (r) => want(r.json?.items?.map((j) => j.index).join() === '4,5' && r.json.next_cursor === null, `indexes ${r.json?.items?.map((j) => j.index)}, next_cursor ${r.json?.next_cursor}`),
	});
	await call(S, 'GET', `/v1/batches/${A_ID}/jobs?state=failed`, {
		expect: 200, label: 'GET /v1/batches/{id}/jobs?state=failed 200',
		check: (r) => want(r.json?.items?.length === 1 && r.json.items[0].id === A_JOBS[5], 'state filter'),
	});
	await call(S, 'GET', `/v1/batches/${A_ID}/jobs?limit=1001`, { expect: 400, label: 'GET /v1/batches/{id}/jobs?limit=1001 400' });
	await call(S, 'GET', `/v1/batches/${A_ID}/joblog`, {
		expect: 200, label: 'GET /v1/batches/{id}/joblog 200',
		check: (r) => {
			const lines = r.body.split('\n');
			return [
				...want(lines[0] === 'Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand', `header ${JSON.stringify(lines[0])}`),
				...want(lines.length > 2 && lines.pop() === '' && lines.every((l) => l.split('\t').length === 9), 'a line without 9 tab-separated columns'),
			];
		},
	});
	await call(S, 'GET', `/v1/batches/${A_ID}/joblog?limit=5`, { expect: 400, label: 'GET /v1/batches/{id}/joblog?limit=5 400' });
	await call(S, 'PATCH', `/v1/batches/${A_ID}`, {
		expect: 200, label: 'PATCH /v1/batches/{id} 200 (priority and concurrency)', json: { priority: 7, concurrency: 3 },
		check: (r) => want(r.json?.priority === 7 && r.json?.concurrency === 3, `priority ${r.json?.priority}, concurrency ${r.json?.concurrency}`),
	});
	await call(S, 'PATCH', `/v1/batches/${A_ID}`, {
		expect: 200, label: 'PATCH /v1/batches/{id} 200 (concurrency lifted)', json: { concurrency: null },
		check: (r) => want(r.json?.concurrency === null, `concurrency ${r.json?.concurrency}`),
	});
	await call(S, 'PATCH', `/v1/batches/${A_ID}`, {
		expect: 400, label: 'PATCH /v1/batches/{id} 400 (a field that cannot change)', json: { name: 'x' },
		check: (r) => want(r.json?.errors?.some((e) => e.path === '/name'), `errors ${JSON.stringify(r.json?.errors)}`),
	});
	await call(S, 'PATCH', '/v1/batches/b_999999999999', { expect: 404, json: { priority: 1 }, label: 'PATCH /v1/batches/{id} 404' });
	await call(S, 'GET', `/v1/batches/${A_ID}/deliveries`, {
		expect: 200, label: 'GET /v1/batches/{id}/deliveries 200 (no webhook)',
		check: (r) => want(Array.isArray(r.json?.items) && r.json.items.length === 0 && r.json.next_cursor === null, 'not an empty page'),
	});
	await call(S, 'GET', '/v1/batches/b_999999999999/deliveries', { expect: 404, label: 'GET /v1/batches/{id}/deliveries 404' });
	await call(S, 'POST', '/v1/batches', {
		expect: 400, label: 'POST /v1/batches 400 (webhook host not allowed)',
		json: { jobs: [{ kind: 'noop' }], webhook: { url: 'http://127.0.0.1:9/hook' } },
		check: (r) => want(r.json?.errors?.some((e) => e.path === '/webhook/url'), `errors ${JSON.stringify(r.json?.errors)}`),
	});
	// a webhook to a loopback port where nothing listens: its 201 shows the
	// generated secret, the batch read shows url and events, and its
	// deliveries list the failed attempts
	const hooked = await call(S, 'POST', '/v1/batches', {
		expect: 201, label: 'POST /v1/batches 201 (webhook, generated secret)',
		json: { jobs: [{ kind: 'noop' }], webhook: { url: 'http://127.0.0.2:9/hook', events: ['batch.finished', 'job.finished'] } },
		check: (r) => want(/^whsec_/.test(r.json?.webhook?.secret ?? ''), `webhook ${JSON.stringify(r.json?.webhook)}`),
	});
	const W_ID = hooked.json?.id;
	if (W_ID) {
		await call(S, 'GET', `/v1/batches/${W_ID}?wait=10`, {
			expect: 200, label: 'GET /v1/batches/{id} 200 (with its webhook, no secret)',
			check: (r) => want(r.json?.webhook?.url === 'http://127.0.0.2:9/hook' && !('secret' in (r.json?.webhook ?? {})), `webhook ${JSON.stringify(r.json?.webhook)}`),
		});
		for (let i = 0; i < 50; i++) {
			const r = await fetch(`http://127.0.0.1:${S.port}/v1/batches/${W_ID}/deliveries`).then((x) => x.json()).catch(() => null);
			if (r?.items?.length === 2 && r.items.every((d) => d.attempts > 0)) break;
			await new Promise((res) => setTimeout(res, 100));
		}
		await call(S, 'GET', `/v1/batches/${W_ID}/deliveries`, {
			expect: 200, label: 'GET /v1/batches/{id}/deliveries 200 (failed attempts)',
			check: (r) => want(r.json?.items?.length === 2 && r.json.items.every((d) => d.attempts > 0 && d.state === 'pending'), `items ${JSON.stringify(r.json?.items)}`),
		});
	}
	await call(S, 'POST', '/v1/batches', {
		expect: 400, label: 'POST /v1/batches 400 (a bad follow-up)',
		json: { jobs: [{ kind: 'noop' }], then: { on: 'success', batch: { jobs: [{ kind: 'nope' }] } } },
		check: (r) => want(r.json?.errors?.some((e) => e.path === '/then/batch/jobs/0/kind'), `errors ${JSON.stringify(r.json?.errors)}`),
	});
	const parent = await call(S, 'POST', '/v1/batches', {
		expect: 201, label: 'POST /v1/batches 201 (with a follow-up)',
		json: { jobs: [{ kind: 'noop' }], then: { on: 'completion', batch: { name: 'next', jobs: [{ kind: 'noop' }] } } },
		check: (r) => want(r.json?.then_state === 'pending' && r.json.then_batch_id === null && r.json.parent_id === null, 'follow-up fields'),
	});
	if (parent.json?.id) {
		const ended = await call(S, 'GET', `/v1/batches/${parent.json.id}?wait=10`, { expect: 200, label: 'GET /v1/batches/{id}?wait= 200 (a parent)' });
		let child = ended.json?.then_batch_id;
		for (let i = 0; !child && i < 50; i++) {
			await new Promise((ok) => setTimeout(ok, 100));
			child = (await call(S, 'GET', `/v1/batches/${parent.json.id}`, { expect: 200 })).json?.then_batch_id;
		}
		await call(S, 'GET', `/v1/batches/${child}`, {
			expect: 200, label: 'GET /v1/batches/{id} 200 (a follow-up)',
			check: (r) => want(r.json?.parent_id === parent.json.id && r.json.name === 'next', `follow-up ${JSON.stringify(r.json)}`),
		});
	}

	// The nulls a read shows are accepted back (as absent).
	const nulls = await call(S, 'POST', '/v1/batches', {
		expect: 201, label: 'POST /v1/batches 201 (the nulls a read returns)',
		json: { name: null, concurrency: null, jobs: [{ kind: 'noop', name: null, timeout_s: null }] },
		check: (r) => want(r.json?.name === null && r.json?.concurrency === null, `name ${r.json?.name}, concurrency ${r.json?.concurrency}`),
	});
	await call(S, 'GET', `/v1/jobs/${nulls.json?.job_ids?.[0]}?wait=10`, {
		expect: 200, label: 'GET /v1/jobs/{id}?wait=10 200 (submitted with nulls)',
		check: (r) => want(r.json?.name === null && r.json?.timeout_s === null && r.json?.state === 'succeeded', `name ${r.json?.name}, timeout_s ${r.json?.timeout_s}, state ${r.json?.state}`),
	});
	// -- cancel and delete
	const hang = await call(S, 'POST', '/v1/batches', {
		expect: 201, label: 'POST /v1/batches 201 (hanging jobs)',
		json: { name: 'hang', jobs: [{ kind: 'fail', args: { mode: 'hang' } }, { kind: 'sleep', args: { seconds: 30 } }, { kind: 'sleep', args: { seconds: 30 } }] },
	});
	const H_ID = hang.json?.id;
	const H_JOBS = hang.json?.job_ids ?? [];
	await call(S, 'DELETE', `/v1/batches/${H_ID}`, { expect: 409, label: 'DELETE /v1/batches/{id} 409 (not terminal)' });
	await call(S, 'POST', `/v1/jobs/${H_JOBS[2]}/cancel`, {
		expect: 200, label: 'POST /v1/jobs/{id}/cancel 200',
		check: (r) => want(['canceled', 'running'].includes(r.json?.state), `state ${r.json?.state}`),
	});
	await call(S, 'GET', `/v1/jobs/${H_JOBS[2]}?wait=10`, { expect: 200, label: 'GET /v1/jobs/{id}?wait=10 200 (canceled job)', check: (r) => want(r.json?.state === 'canceled', `state ${r.json?.state}`) });
	await call(S, 'POST', `/v1/jobs/${H_JOBS[2]}/cancel`, { expect: 409, label: 'POST /v1/jobs/{id}/cancel 409 (terminal)' });
	await call(S, 'POST', `/v1/batches/${H_ID}/cancel`, { expect: 200, label: 'POST /v1/batches/{id}/cancel 200' });
	await call(S, 'GET', `/v1/batches/${H_ID}?wait=15`, { expect: 200, label: 'GET /v1/batches/{id}?wait=15 200 (canceled batch)', check: (r) => want(r.json?.state === 'canceled', `state ${r.json?.state}`) });
	await call(S, 'POST', `/v1/batches/${H_ID}/cancel`, { expect: 409, label: 'POST /v1/batches/{id}/cancel 409 (terminal)' });
	await call(S, 'DELETE', `/v1/batches/${A_ID}`, { expect: 204, label: 'DELETE /v1/batches/{id} 204' });
	await call(S, 'DELETE', `/v1/batches/${A_ID}`, { expect: 404, label: 'DELETE /v1/batches/{id} 404 (deleted)' });
	await call(S, 'GET', `/v1/jobs/${A_JOBS[0]}`, { expect: 404, label: 'GET /v1/jobs/{id} 404 (batch deleted)' });
	// Deleting the batch forgot its Idempotency-Key: the same key now stores a new batch.
	await call(S, 'POST', '/v1/batches', {
		expect: 201, json: { jobs: [{ kind: 'noop' }] }, headers: { 'Idempotency-Key': key }, label: 'POST /v1/batches 201 (key forgotten with its batch)',
	});

	// -- pool
	await call(S, 'GET', '/v1/pool', { expect: 200, check: (r) => want(r.json?.size === 2 && r.json.workers?.length === 2, `size ${r.json?.size}, workers ${r.json?.workers?.length}`) });
	await call(S, 'PUT', '/v1/pool', { expect: 200, json: { size: 3 }, label: 'PUT /v1/pool 200 (grow)', check: (r) => want(r.json?.size === 3, `size ${r.json?.size}`) });
	await call(S, 'PUT', '/v1/pool', { expect: 200, json: { size: 1 }, label: 'PUT /v1/pool 200 (shrink)', check: (r) => want(r.json?.size === 1, `size ${r.json?.size}`) });
	await call(S, 'PUT', '/v1/pool', { expect: 400, json: { size: 0 }, label: 'PUT /v1/pool 400 (size 0)' });
	await call(S, 'PUT', '/v1/pool', { expect: 400, json: { size: 2, extra: 1 }, label: 'PUT /v1/pool 400 (unknown member)' });
	await call(S, 'PUT', '/v1/pool', { expect: 400, body: '{"size":', headers: { 'Content-Type': 'application/json' }, label: 'PUT /v1/pool 400 (invalid-json)' });
	await call(S, 'PUT', '/v1/pool', { expect: 415, body: 'size=2', headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, label: 'PUT /v1/pool 415' });
	await call(S, 'DELETE', '/v1/pool', { expect: 405, label: 'DELETE /v1/pool 405' });
	await sleep(300);
	await call(S, 'GET', '/v1/pool', { expect: 200, label: 'GET /v1/pool 200 (after shrink)', check: (r) => want(r.json?.size === 1, `size ${r.json?.size}`) });
	await call(S, 'PUT', '/v1/pool', { expect: 200, json: { size: 2 }, label: 'PUT /v1/pool 200 (restore)' });
	// -- nodes: with SQLite, the answering server alone
	await call(S, 'GET', '/v1/nodes', { expect: 200, check: (r) => want(r.json?.items?.length === 1 && r.json.items[0].self === true && r.json.items[0].pool_size === 2, `items ${JSON.stringify(r.json?.items)}`) });
	await call(S, 'POST', '/v1/nodes', { expect: 405, json: {}, label: 'POST /v1/nodes 405' });

	// -- metrics
	await call(S, 'GET', '/metrics', {
		expect: 200,
		check: (r) => ['jobpool_jobs{', 'jobpool_queue_depth', 'jobpool_jobs_running', 'jobpool_pool_size', 'jobpool_workers_live',
			'jobpool_job_run_seconds_bucket', 'jobpool_job_queue_wait_seconds_bucket', 'jobpool_http_requests_total{', 'jobpool_batches_submitted_total']
			.filter((m) => !r.body.includes(m)).map((m) => `no ${m} in the exposition`),
	});

	// -- events
	await eventsChecks(S);
	const errAt = (p) => (r) => want(r.json?.errors?.some((e) => e.path === p), `no error at ${p} (got ${(r.json?.errors ?? []).map((e) => e.path).join(', ')})`);
	await call(S, 'GET', '/v1/events?batch_id=nope', { expect: 400, label: 'GET /v1/events?batch_id=nope 400', check: errAt('?batch_id') });
	await call(S, 'GET', '/v1/events?last_event_id=abc', { expect: 400, label: 'GET /v1/events?last_event_id=abc 400', check: errAt('?last_event_id') });
	await call(S, 'GET', '/v1/events', { expect: 400, headers: { 'Last-Event-ID': 'x' }, label: 'GET /v1/events 400 (bad Last-Event-ID)', check: (r) => want(r.json?.errors?.some((e) => e.path === 'Last-Event-ID'), 'no error at Last-Event-ID') });
	await call(S, 'POST', '/v1/events', { expect: 405, json: {}, label: 'POST /v1/events 405' });

	// -- HEAD: every GET path answers it with the GET's status and headers, no body
	for (const path of ['/healthz', '/readyz', '/openapi.yaml', '/metrics', '/', '/v1/batches', '/v1/pool', '/v1/nodes', `/v1/batches/${H_ID}`, `/v1/batches/${H_ID}/jobs`, `/v1/batches/${H_ID}/joblog`, `/v1/jobs/${H_JOBS[0]}`])
		await call(S, 'HEAD', path, { expect: 200, label: `HEAD ${findTemplate(path)} 200`, check: (r) => want(r.body === '', 'HEAD answered a body') });
	await call(S, 'HEAD', '/v1/jobs/j_999999999999', { expect: 404, label: 'HEAD /v1/jobs/{id} 404', check: (r) => want(r.body === '', 'HEAD answered a body') });

	// -- OPTIONS (no CORS origin configured on the main server)
	await call(S, 'OPTIONS', '/v1/batches', {
		expect: 204, headers: { Origin: ORIGIN, 'Access-Control-Request-Method': 'POST' }, label: 'OPTIONS /v1/batches 204 (preflight, no --cors-origin)',
		check: (r) => Object.keys(r.headers).filter((h) => h.startsWith('access-control-')).map((h) => `${h} sent without --cors-origin`),
	});
	await call(S, 'OPTIONS', '/v1/batches', {
		expect: 204, label: 'OPTIONS /v1/batches 204',
		check: (r) => want(/GET/.test(r.headers.allow ?? '') && /POST/.test(r.headers.allow ?? ''), `Allow ${r.headers.allow}`),
	});
	await call(S, 'OPTIONS', `/v1/batches/${H_ID}`, { expect: 204, label: 'OPTIONS /v1/batches/{id} 204' });
	await call(S, 'OPTIONS', '/v1/pool', { expect: 204, label: 'OPTIONS /v1/pool 204', check: (r) => want(/PUT/.test(r.headers.allow ?? ''), `Allow ${r.headers.allow}`) });

	// -- limits server: 413 and 429
	await call(L, 'POST', '/v1/batches', {
		expect: 413, label: 'POST /v1/batches 413 (--max-body-bytes 2048)',
		json: { name: 'x'.repeat(4096), jobs: [{ kind: 'noop' }] },
		check: (r) => want(r.json?.type === 'urn:jobpool:problem:body-too-large', `type ${r.json?.type}`),
	});
	await call(L, 'POST', '/v1/batches', {
		expect: 429, label: 'POST /v1/batches 429 (--max-queued-jobs 1)',
		json: { jobs: [{ kind: 'noop' }, { kind: 'noop' }] },
		check: (r) => want(r.json?.type === 'urn:jobpool:problem:queue-full', `type ${r.json?.type}`),
	});
	await call(L, 'POST', '/v1/batches', { expect: 201, json: { jobs: [{ kind: 'noop' }] }, label: 'POST /v1/batches 201 (within the queue limit)' });

	// -- auth + CORS server
	await call(A, 'GET', '/v1/pool', { expect: 401, label: 'GET /v1/pool 401 (no token)', check: (r) => want(r.json?.type === 'urn:jobpool:problem:unauthorized', `type ${r.json?.type}`) });
	await call(A, 'GET', '/v1/batches', { expect: 401, headers: { Authorization: 'Bearer wrong' }, label: 'GET /v1/batches 401 (wrong token)' });
	await call(A, 'POST', '/v1/batches', { expect: 401, json: { jobs: [{ kind: 'noop' }] }, label: 'POST /v1/batches 401 (no token)' });
	await call(A, 'GET', '/metrics', { expect: 401, label: 'GET /metrics 401 (no token)' });
	await call(A, 'GET', '/openapi.yaml', { expect: 401, label: 'GET /openapi.yaml 401 (no token)' });
	await call(A, 'GET', '/healthz', { expect: 200, label: 'GET /healthz 200 (no token needed)' });
	await call(A, 'GET', '/', { expect: 200, label: 'GET / 200 (the dashboard page needs no token)' });
	await call(A, 'GET', '/v1/pool', {
		expect: 200, headers: { Authorization: `Bearer ${TOKEN}`, Origin: ORIGIN }, label: 'GET /v1/pool 200 (token, allowed Origin)',
		check: (r) => [
			...want(r.headers['access-control-allow-origin'] === ORIGIN, `Access-Control-Allow-Origin ${r.headers['access-control-allow-origin']}`),
			...want(/\bOrigin\b/i.test(r.headers.vary ?? ''), `Vary ${r.headers.vary}`),
			...want(/Location/.test(r.headers['access-control-expose-headers'] ?? '') && /Retry-After/.test(r.headers['access-control-expose-headers'] ?? ''), `Access-Control-Expose-Headers ${r.headers['access-control-expose-headers']}`),
		],
	});
	await call(A, 'GET', '/v1/pool', {
		expect: 200, headers: { Authorization: `Bearer ${TOKEN}`, Origin: 'http://evil.example.test' }, label: 'GET /v1/pool 200 (token, other Origin)',
		check: (r) => want(r.headers['access-control-allow-origin'] === undefined, 'CORS header sent to a disallowed origin'),
	});
	await call(A, 'OPTIONS', '/v1/batches', {
		expect: 204, headers: { Origin: ORIGIN, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'authorization, content-type, idempotency-key' },
		label: 'OPTIONS /v1/batches 204 (CORS preflight, no token)',
		check: (r) => [
			...want(r.headers['access-control-allow-origin'] === ORIGIN, `Access-Control-Allow-Origin ${r.headers['access-control-allow-origin']}`),
			...want(r.headers['access-control-allow-methods'] === 'GET, POST, PUT, PATCH, DELETE', `Access-Control-Allow-Methods ${r.headers['access-control-allow-methods']}`),
			...want(r.headers['access-control-allow-headers'] === 'Authorization, Content-Type, Idempotency-Key, Last-Event-ID', `Access-Control-Allow-Headers ${r.headers['access-control-allow-headers']}`),
			...want(r.headers['access-control-max-age'] === '600', `Access-Control-Max-Age ${r.headers['access-control-max-age']}`),
		],
	});

	await call(A, 'OPTIONS', '/v1/batches', {
		expect: 204, headers: { Origin: 'http://evil.example.test', 'Access-Control-Request-Method': 'POST' },
		label: 'OPTIONS /v1/batches 204 (preflight, other Origin)',
		check: (r) => Object.keys(r.headers).filter((h) => h.startsWith('access-control-')).map((h) => `${h} sent to a disallowed origin`),
	});

	clearTimeout(overall);
	await stopServers();
	finish();
}

async function eventsChecks(S) {
	const label = 'GET /v1/events';
	const h = await openEvents(S.port, '/v1/events');
	if (!h.status) {
		report(`${label} 0`, [`request failed: ${h.error}`]);
		return;
	}
	const sub = await http(S.port, 'POST', '/v1/batches', { json: { name: 'events', jobs: [{ kind: 'noop' }] } });
	let batchId;
	try {
		batchId = JSON.parse(sub.body).id;
	} catch { /* reported below */ }
	const problems = [];
	if (h.status !== 200) problems.push('expected status 200');
	const res = { status: h.status, headers: h.headers, body: h.status === 200 ? '' : h.raw };
	if (h.status !== 200) {
		await sleep(200);
		res.body = h.raw;
	}
	problems.push(...validate('GET', '/v1/events', res));
	if (h.status === 200) {
		if (!(await h.waitFor(1, 5000))) problems.push(`no event within 5 s of submitting a batch (sub ${sub.status})`);
		await h.waitFor(4, 1500); // a few more: the noop runs and ends at once
		// Each parsed event {event, id, data} must be a ServerSentEvent, the schema the
		// stream's x-item-schema names.
		const item = spec.paths['/v1/events']?.get?.responses?.['200']?.content?.['text/event-stream']?.['x-item-schema'];
		if (!item) problems.push('the event stream has no x-item-schema');
		const v = validatorFor(item ?? {});
		let prevId = -1n;
		for (const ev of h.events) {
			if (!/^[0-9]+$/.test(ev.id ?? '')) problems.push(`event without a numeric id: ${ev.id}`);
			else {
				if (BigInt(ev.id) <= prevId) problems.push(`event ids do not increase: ${ev.id} after ${prevId}`);
				prevId = BigInt(ev.id);
			}
			let data;
			try {
				data = JSON.parse(ev.data);
			} catch (e) {
				problems.push(`event ${ev.id} data is not JSON: ${e.message}`);
				continue;
			}
			if (!v({ event: ev.event, id: ev.id, data })) problems.push(`event ${ev.id} (${ev.event}): ${ajvErrors(v)}`);
		}
		if (batchId && h.events.length && !h.events.some((e) => e.data.includes(batchId)))
			problems.push(`no event names batch ${batchId}`);
	} else if (h.raw) {
		try {
			problems.push(`server said: ${JSON.parse(h.raw).detail}`);
		} catch { /* not JSON */ }
	}
	h.close();
	report(`${label} ${h.status}${h.events.length ? ` (${h.events.length} events)` : ''}`, problems);

	// Resume with Last-Event-ID: replays what followed the first event (of this batch).
	if (h.status === 200 && h.events.length >= 2 && batchId) {
		const first = h.events[0].id;
		const h2 = await openEvents(S.port, `/v1/events?batch_id=${batchId}`, { 'Last-Event-ID': first });
		const p2 = [...want(h2.status === 200, `status ${h2.status}`)];
		if (h2.status === 200) p2.push(...validate('GET', '/v1/events', { status: h2.status, headers: h2.headers, body: '' }));
		if (h2.status === 200 && !(await h2.waitFor(1, 3000))) p2.push('no replayed event after Last-Event-ID');
		for (const ev of h2.events)
			if (ev.event !== 'reset' && BigInt(ev.id ?? '0') <= BigInt(first)) p2.push(`replayed event ${ev.id} is not after ${first}`);
		h2.close();
		report(`GET /v1/events?batch_id= ${h2.status} (Last-Event-ID replay)`, p2);
	}
}

main().catch((e) => {
	console.log(`FAIL internal error: ${e.stack ?? e}`);
	failed++;
	finish(1);
});
