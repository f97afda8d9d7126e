// seed.ts - the README's seed batch, through a client generated from openapi.yaml.
//
// Starts jobpoold (env JOBPOOLD) on 127.0.0.1 port 0 with a temporary database, then,
// with openapi-fetch over the types openapi-typescript generated (build/schema.d.ts):
// submits the seed batch (15 sleep jobs, the seed's seconds scaled by 0.01,
// concurrency 5), long-polls it, reads each job's typed result, follows the events of a
// second batch while canceling it, and resizes the pool. It must type-check with
// `tsc --strict` without `any` or casts on API data: that is what this test is for.
// Prints `ok CHECK` or `FAIL CHECK: why` per check and ends with the one line
// `client: N passed, M failed`; exit status 1 when M > 0.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import createClient from 'openapi-fetch';
import type { components, paths } from './build/schema.js';

type Schemas = components['schemas'];
type SleepJob = Schemas['SleepJob'];
type ServerSentEvent = Schemas['ServerSentEvent'];

// The seed (SPEC section 1): these seconds, scaled down so the batch runs fast.
const SEED_SECONDS = [2.92, 1.08, 1.83, 1.67, 3.21, 3.03, 3.68, 1.26, 2.27, 1.09, 1.66, 2.52, 1.08, 1.6, 2.95];
const SCALE = 0.01;
const CONCURRENCY = 5;

let passed = 0;
let failed = 0;
function check(label: string, ok: boolean, why = ''): boolean {
	if (ok) {
		passed++;
		console.log(`ok ${label}`);
	} else {
		failed++;
		console.log(`FAIL ${label}${why ? `: ${why}` : ''}`);
	}
	return ok;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// startServer runs jobpoold and resolves with its port, read from its "listening on" line.
function startServer(bin: string, dir: string): Promise<{ child: ChildProcess; port: number }> {
	const child = spawn(bin, ['--listen', '127.0.0.1:0', '--db', join(dir, 'jobpool.db'), '--workers', '5'], {
		stdio: ['ignore', 'ignore', 'pipe'],
	});
	return new Promise((resolve, reject) => {
		let buf = '';
		const timer = setTimeout(() => reject(new Error(`no "listening on" line within 10 s: ${buf.slice(-300)}`)), 10_000);
		child.on('error', (e) => {
			clearTimeout(timer);
			reject(e);
		});
		child.on('exit', (code) => {
			clearTimeout(timer);
			reject(new Error(`jobpoold exited (${code}) before listening: ${buf.slice(-300)}`));
		});
		child.stderr?.setEncoding('utf8');
		child.stderr?.on('data', (d: string) => {
			buf += d;
			const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(buf);
			if (m?.[1]) {
				clearTimeout(timer);
				child.stderr?.removeAllListeners('data');
				child.stderr?.resume();
				resolve({ child, port: Number(m[1]) });
			}
		});
	});
}

// readEvents reads the SSE stream until `until` says stop or ms elapse; each event is
// parsed into the generated ServerSentEvent union by a type guard, never a cast.
async function readEvents(url: string, ms: number, until: (evs: ServerSentEvent[]) => boolean): Promise<ServerSentEvent[]> {
	const events: ServerSentEvent[] = [];
	const ctl = new AbortController();
	const timer = setTimeout(() => ctl.abort(), ms);
	try {
		const res = await fetch(url, { headers: { Accept: 'text/event-stream' }, signal: ctl.signal });
		if (!res.body) return events;
		const decoder = new TextDecoder();
		let buf = '';
		for await (const chunk of res.body) {
			buf += decoder.decode(chunk, { stream: true });
			let sep: number;
			while ((sep = buf.indexOf('\n\n')) >= 0) {
				const ev = parseEvent(buf.slice(0, sep));
				buf = buf.slice(sep + 2);
				if (ev) events.push(ev);
			}
			if (until(events)) break;
		}
	} catch {
		// aborted: the events read so far are the answer
	} finally {
		clearTimeout(timer);
		ctl.abort();
	}
	return events;
}

function parseEvent(block: string): ServerSentEvent | undefined {
	let event = '';
	let id = '';
	let data = '';
	for (const line of block.split('\n')) {
		const i = line.indexOf(':');
		if (i <= 0) continue;
		const value = line.slice(i + 1).replace(/^ /, '');
		const field = line.slice(0, i);
		if (field === 'event') event = value;
		else if (field === 'id') id = value;
		else if (field === 'data') data = value;
	}
	const parsed: unknown = JSON.parse(data || 'null');
	if (typeof parsed !== 'object' || parsed === null) return undefined;
	if (event === 'job' && 'id' in parsed && 'batch_id' in parsed && 'state' in parsed && 'attempts' in parsed) {
		const { id: jobId, batch_id, state, attempts } = parsed;
		if (typeof jobId === 'string' && typeof batch_id === 'string' && typeof attempts === 'number' && isJobState(state))
			return { event: 'job', id, data: { id: jobId, batch_id, state, attempts } };
	}
	if (event === 'batch' && 'id' in parsed && 'state' in parsed && 'counts' in parsed && 'halted' in parsed) {
		const counts = toCounts(parsed.counts);
		const halted = toHalted(parsed.halted);
		if (typeof parsed.id === 'string' && isBatchState(parsed.state) && counts && halted !== undefined)
			return { event: 'batch', id, data: { id: parsed.id, state: parsed.state, counts, halted } };
	}
	if (event === 'reset') return { event: 'reset', id, data: { missed: true } };
	return undefined;
}

// toHalted reads a batch's `halted`: null until its halt policy fired, then {reason, at}.
function toHalted(v: unknown): { reason: string; at: string } | null | undefined {
	if (v === null) return null;
	if (typeof v !== 'object' || !('reason' in v) || !('at' in v)) return undefined;
	const { reason, at } = v;
	return typeof reason === 'string' && typeof at === 'string' ? { reason, at } : undefined;
}

const JOB_STATES: readonly Schemas['JobState'][] = ['queued', 'running', 'succeeded', 'failed', 'timed_out', 'canceled'];
const BATCH_STATES: readonly Schemas['BatchState'][] = ['queued', 'running', 'succeeded', 'failed', 'canceled'];
const isJobState = (s: unknown): s is Schemas['JobState'] => JOB_STATES.some((x) => x === s);
const isBatchState = (s: unknown): s is Schemas['BatchState'] => BATCH_STATES.some((x) => x === s);
// field reads one member of a parsed JSON object, typed unknown until checked.
function field(o: object, k: string): unknown {
	const v: unknown = Object.getOwnPropertyDescriptor(o, k)?.value;
	return v;
}
function toCounts(x: unknown): Schemas['BatchCounts'] | undefined {
	if (typeof x !== 'object' || x === null) return undefined;
	const n = (k: string) => {
		const v = field(x, k);
		return typeof v === 'number' ? v : NaN;
	};
	const c = { total: n('total'), queued: n('queued'), running: n('running'), succeeded: n('succeeded'),
		failed: n('failed'), timed_out: n('timed_out'), canceled: n('canceled') };
	return Object.values(c).every(Number.isInteger) ? c : undefined;
}

async function main(): Promise<void> {
	const bin = process.env.JOBPOOLD;
	if (!bin) throw new Error('set JOBPOOLD to the jobpoold binary');
	const dir = mkdtempSync(join(tmpdir(), 'jobpool-client-'));
	let child: ChildProcess | undefined;
	try {
		const srv = await startServer(bin, dir);
		child = srv.child;
		const baseUrl = `http://127.0.0.1:${srv.port}`;
		// No token: the contract says auth is optional, as a loopback server behaves.
		const client = createClient<paths>({ baseUrl });

		let ready = false;
		for (let i = 0; i < 100 && !ready; i++) {
			const { data } = await client.GET('/readyz');
			ready = data?.status === 'ready';
			if (!ready) await sleep(50);
		}
		check('GET /readyz without a token is ready', ready);

		// -- the seed batch: the request type keeps defaults (priority, max_attempts,
		// retry_backoff_s) optional and types args per kind.
		const jobs: SleepJob[] = SEED_SECONDS.map((s) => ({ kind: 'sleep', args: { seconds: Math.round(s * SCALE * 1e4) / 1e4 } }));
		const created = await client.POST('/v1/batches', { body: { name: 'seed', concurrency: CONCURRENCY, jobs } });
		const batch = created.data;
		if (!check('POST /v1/batches 201', created.response.status === 201 && batch !== undefined, `status ${created.response.status} ${created.error?.detail ?? ''}`) || !batch)
			return;
		check('the batch has 15 job ids and a Location', batch.job_ids.length === 15 && created.response.headers.get('location') === `/v1/batches/${batch.id}`);

		const done = await client.GET('/v1/batches/{id}', { params: { path: { id: batch.id }, query: { wait: 30 } } });
		const final = done.data;
		check('long-poll ends with the batch succeeded', final?.state === 'succeeded', `state ${final?.state}`);
		check('counts: 15 succeeded', final?.counts.succeeded === 15 && final.counts.total === 15, JSON.stringify(final?.counts));
		const par = final?.timings.parallelism ?? null;
		check(`parallelism is within 1..${CONCURRENCY}`, par !== null && par > 1 && par <= CONCURRENCY + 0.01, `parallelism ${par}`);

		const list = await client.GET('/v1/batches/{id}/jobs', { params: { path: { id: batch.id }, query: { limit: 100 } } });
		const items = list.data?.items ?? [];
		check('the jobs come back in submission order', items.map((j) => j.index).join() === SEED_SECONDS.map((_, i) => i).join());
		let typed = 0;
		for (const job of items) {
			// The discriminated union: once kind is 'sleep', args and result are the sleep's.
			if (job.kind !== 'sleep' || job.result === null) continue;
			const want = job.args.seconds * 1000;
			const slept: number = job.result.slept_ms;
			if (slept >= want * 0.9 && job.state === 'succeeded' && job.timings.run_ms !== null) typed++;
		}
		check('each result.slept_ms matches its args.seconds', typed === 15, `${typed} of 15`);
		const overlap = maxOverlap(items);
		check(`at most ${CONCURRENCY} jobs ran at once`, overlap >= 1 && overlap <= CONCURRENCY, `${overlap} at once`);

		// -- a second batch, canceled while its events are followed
		const long = await client.POST('/v1/batches', {
			body: { name: 'to-cancel', concurrency: 2, jobs: Array.from({ length: 6 }, (): SleepJob => ({ kind: 'sleep', args: { seconds: 30 }, max_attempts: 1 })) },
		});
		const longId = long.data?.id;
		if (!check('POST /v1/batches 201 (batch to cancel)', longId !== undefined) || !longId) return;
		const events = readEvents(`${baseUrl}/v1/events?batch_id=${longId}`, 10_000,
			(evs) => evs.some((e) => e.event === 'batch' && e.data.state === 'canceled'));
		await sleep(200);
		const canceled = await client.POST('/v1/batches/{id}/cancel', { params: { path: { id: longId } } });
		check('POST /v1/batches/{id}/cancel 200', canceled.response.status === 200, `status ${canceled.response.status}`);
		const after = await client.GET('/v1/batches/{id}', { params: { path: { id: longId }, query: { wait: 10 } } });
		check('the canceled batch ends canceled', after.data?.state === 'canceled' && after.data.counts.canceled === 6, JSON.stringify(after.data?.counts));
		const jobsAfter = await client.GET('/v1/batches/{id}/jobs', { params: { path: { id: longId } } });
		check('its jobs are canceled, with no result', (jobsAfter.data?.items ?? []).every((j) => j.kind === 'sleep' && j.state === 'canceled' && j.result === null));
		const evs = await events;
		check('the events stream typed job and batch events', evs.some((e) => e.event === 'job' && e.data.batch_id === longId) &&
			evs.some((e) => e.event === 'batch' && e.data.state === 'canceled'), `${evs.length} events: ${evs.map((e) => e.event).join(',')}`);

		// -- the pool
		const resized = await client.PUT('/v1/pool', { body: { size: 3 } });
		check('PUT /v1/pool 200 resizes to 3', resized.data?.size === 3, `size ${resized.data?.size}`);
		const pool = await client.GET('/v1/pool');
		check('GET /v1/pool shows size 3', pool.data?.size === 3 && pool.data.workers.length >= 3, `size ${pool.data?.size}`);
		const bad = await client.PUT('/v1/pool', { body: { size: 0 } });
		check('PUT /v1/pool 400 with a typed problem', bad.response.status === 400 && bad.error?.errors.some((e) => e.path === '/size') === true, `status ${bad.response.status}`);
	} finally {
		if (child?.pid && child.exitCode === null) {
			const exited = new Promise<void>((r) => child?.once('exit', () => r()));
			child.kill('SIGTERM');
			await Promise.race([exited, sleep(3000)]);
			if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
		}
		rmSync(dir, { recursive: true, force: true });
	}
}

// maxOverlap is the largest number of jobs whose [started_at, finished_at) overlap.
function maxOverlap(jobs: { started_at: string | null; finished_at: string | null }[]): number {
	const edges: [number, number][] = [];
	for (const j of jobs) {
		if (j.started_at === null || j.finished_at === null) continue;
		edges.push([Date.parse(j.started_at), 1], [Date.parse(j.finished_at), -1]);
	}
	edges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
	let now = 0;
	let most = 0;
	for (const [, d] of edges) {
		now += d;
		most = Math.max(most, now);
	}
	return most;
}

main()
	.catch((e: unknown) => check('the client run', false, e instanceof Error ? e.message : String(e)))
	.finally(() => {
		console.log(`client: ${passed} passed, ${failed} failed`);
		process.exit(failed > 0 || passed === 0 ? 1 : 0);
	});
