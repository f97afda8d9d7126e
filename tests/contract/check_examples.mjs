#!/usr/bin/env node
// check_examples.mjs SPEC - compile every schema of an OpenAPI 3.1 document with
// Ajv (JSON Schema 2020-12) and validate every example against its schema.
//
// Checked: each components/schemas entry compiles; schema-level `examples` of
// components/schemas entries; `example`/`examples` of parameters, headers and of
// every media type (request bodies and responses, in paths and in components),
// with `$ref`s to components/examples, responses, parameters, headers resolved.
// Prints one line per failure, then `contract-examples: N passed, M failed`
// (N and M count schema compilations and example validations).
// Exit 0 when nothing failed, 1 otherwise (2 on usage or read errors).
//
// Needs the npm packages yaml, ajv and ajv-formats (see package.json).
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

const specPath = process.argv[2];
if (!specPath) {
	console.error('usage: node check_examples.mjs openapi.yaml');
	process.exit(2);
}
let spec;
try {
	spec = parse(readFileSync(specPath, 'utf8'));
} catch (e) {
	console.error(`contract-examples: cannot read ${specPath}: ${e.message}`);
	process.exit(2);
}

const SCHEMA_PREFIX = '#/components/schemas/';
let passed = 0;
let failed = 0;
const fail = (where, msg) => {
	failed++;
	console.log(`FAIL ${where}: ${msg}`);
};

// rewriteRefs returns a copy of schema whose `#/components/schemas/X[/rest]`
// refs point at the Ajv ids `oas:X[#/rest]`; any other $ref is an error.
function rewriteRefs(node, where) {
	if (Array.isArray(node)) return node.map((v) => rewriteRefs(v, where));
	if (node === null || typeof node !== 'object') return node;
	const out = {};
	for (const [k, v] of Object.entries(node)) {
		if (k === '$ref' && typeof v === 'string') {
			if (!v.startsWith(SCHEMA_PREFIX))
				throw new Error(`unsupported $ref ${v} in ${where}`);
			const rest = v.slice(SCHEMA_PREFIX.length);
			const slash = rest.indexOf('/');
			out[k] = slash < 0 ? `oas:${rest}` : `oas:${rest.slice(0, slash)}#${rest.slice(slash)}`;
		} else {
			out[k] = rewriteRefs(v, where);
		}
	}
	return out;
}

// resolve follows a local $ref (any component kind) to its target object.
function resolve(node) {
	const seen = new Set();
	while (node && typeof node === 'object' && typeof node.$ref === 'string') {
		const ref = node.$ref;
		if (!ref.startsWith('#/') || seen.has(ref)) throw new Error(`cannot resolve $ref ${ref}`);
		seen.add(ref);
		node = ref
			.slice(2)
			.split('/')
			.map((p) => decodeURIComponent(p).replace(/~1/g, '/').replace(/~0/g, '~'))
			.reduce((o, k) => (o === undefined ? undefined : o[k]), spec);
		if (node === undefined) throw new Error(`dangling $ref ${ref}`);
	}
	return node;
}

const ajv = new Ajv2020({ allErrors: true, strict: true, allowUnionTypes: true });
addFormats(ajv);
// OpenAPI keywords that are not JSON Schema vocabulary: accept and ignore them.
ajv.addVocabulary(['example', 'discriminator', 'xml', 'externalDocs']);

// Register every named schema first (refs between them resolve lazily), then
// compile each one.
const schemas = spec?.components?.schemas ?? {};
const added = [];
for (const [name, schema] of Object.entries(schemas)) {
	try {
		ajv.addSchema(rewriteRefs(schema, `components/schemas/${name}`), `oas:${name}`);
		added.push(name);
	} catch (e) {
		fail(`components/schemas/${name}`, `is not a valid schema: ${e.message}`);
	}
}
for (const name of added) {
	try {
		ajv.getSchema(`oas:${name}`);
		passed++;
	} catch (e) {
		fail(`components/schemas/${name}`, `does not compile: ${e.message}`);
	}
}

// validator compiles an inline schema once per location.
function validator(schema, where) {
	const s = resolve(schema);
	if (typeof s.$ref === 'string') return ajv.getSchema(rewriteRefs(s, where).$ref);
	return ajv.compile(rewriteRefs(s, where));
}

function check(where, schema, value) {
	let validate;
	try {
		validate = validator(schema, where);
		if (!validate) throw new Error('schema not found');
	} catch (e) {
		fail(where, `schema does not compile: ${e.message}`);
		return;
	}
	if (validate(value)) {
		passed++;
		return;
	}
	const errs = validate.errors
		.map((e) => `${e.instancePath || '/'} ${e.message}`)
		.join('; ');
	fail(where, errs);
}

// checkExamples validates the example/examples of an object that has a schema
// (media type, parameter, header).
function checkExamples(where, holder) {
	const hasExample = holder.example !== undefined;
	const examples = holder.examples ?? {};
	if (!hasExample && Object.keys(examples).length === 0) return;
	if (!holder.schema) {
		fail(where, 'has examples but no schema');
		return;
	}
	if (hasExample) check(`${where} example`, holder.schema, holder.example);
	for (const [name, ex] of Object.entries(examples)) {
		let v;
		try {
			v = resolve(ex);
		} catch (e) {
			fail(`${where} examples/${name}`, e.message);
			continue;
		}
		if (v.value === undefined) {
			fail(`${where} examples/${name}`, 'no value (externalValue is not supported)');
			continue;
		}
		check(`${where} examples/${name}`, holder.schema, v.value);
	}
}

function checkContent(where, content) {
	for (const [type, media] of Object.entries(content ?? {}))
		checkExamples(`${where} ${type}`, media);
}

function checkHeaders(where, headers) {
	for (const [name, h] of Object.entries(headers ?? {}))
		if (!h.$ref) checkExamples(`${where} header ${name}`, h);
}

function checkResponse(where, resp) {
	if (resp.$ref) return; // checked once under components/responses
	checkHeaders(where, resp.headers);
	checkContent(where, resp.content);
}

function checkParameters(where, params) {
	for (const p of params ?? [])
		if (!p.$ref) checkExamples(`${where} parameter ${p.name}`, p);
}

// Schema-level examples of the named schemas.
for (const [name, schema] of Object.entries(schemas)) {
	(schema.examples ?? []).forEach((v, i) =>
		check(`components/schemas/${name} examples[${i}]`, { $ref: SCHEMA_PREFIX + name }, v));
}

const comp = spec?.components ?? {};
for (const [name, p] of Object.entries(comp.parameters ?? {}))
	checkExamples(`components/parameters/${name}`, p);
for (const [name, h] of Object.entries(comp.headers ?? {}))
	checkExamples(`components/headers/${name}`, h);
for (const [name, r] of Object.entries(comp.responses ?? {}))
	checkResponse(`components/responses/${name}`, r);
for (const [name, b] of Object.entries(comp.requestBodies ?? {}))
	checkContent(`components/requestBodies/${name}`, b.content);

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
for (const [path, item] of Object.entries(spec?.paths ?? {})) {
	checkParameters(path, item.parameters);
	for (const m of METHODS) {
		const op = item[m];
		if (!op) continue;
		const where = `${m.toUpperCase()} ${path}`;
		checkParameters(where, op.parameters);
		if (op.requestBody && !op.requestBody.$ref)
			checkContent(`${where} request`, op.requestBody.content);
		for (const [status, resp] of Object.entries(op.responses ?? {}))
			checkResponse(`${where} ${status}`, resp);
	}
}

console.log(`contract-examples: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
