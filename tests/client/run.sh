#!/usr/bin/env bash
# run.sh - a TypeScript client generated from openapi.yaml, type-checked and run.
#
#   JOBPOOLD=/path/to/jobpoold tests/client/run.sh
#
# Installs the pinned tools (npm ci), generates build/schema.d.ts from
# ../../openapi.yaml with openapi-typescript, type-checks seed.ts against it
# with tsc --strict --noEmit (and refuses `any` and casts in seed.ts), compiles
# it to build/js and runs it against a jobpoold it starts on 127.0.0.1:0 with
# a temporary database.  Ends with the one line "client: N passed, M failed"
# and exits non-zero when anything failed.  Needs Node.js >= 20 and npm.
set -uo pipefail
cd "$(dirname "$0")"
bin=$(realpath -m "${JOBPOOLD:-../../build/server/jobpoold}")
if [ ! -x "$bin" ]; then
	echo "FAIL no jobpoold binary at $bin (set JOBPOOLD)"
	echo "client: 0 passed, 1 failed"
	exit 1
fi

# step WHAT CMD...: runs CMD; on failure shows its output and gives up.
step() {
	local what=$1 out
	shift
	if ! out=$("$@" 2>&1); then
		echo "$out" | tail -40
		echo "FAIL $what"
		echo "client: 0 passed, 1 failed"
		exit 1
	fi
}

rm -rf build
step "npm ci" npm ci --no-audit --no-fund --loglevel=error
step "generate build/schema.d.ts" npx --no-install openapi-typescript ../../openapi.yaml -o build/schema.d.ts
# Casts and `any` would hide what the generated types get wrong.
if sed 's#//.*##' seed.ts | grep -nE '(\bas\s+(any|unknown|const|[A-Za-z{(\[])|:\s*any\b|<any>|\bany\[\])'; then
	echo "FAIL seed.ts uses a cast or any"
	echo "client: 0 passed, 1 failed"
	exit 1
fi
step "tsc --strict --noEmit" npx --no-install tsc -p tsconfig.json --strict --noEmit
step "tsc (compile to build/js)" npx --no-install tsc -p tsconfig.json
JOBPOOLD=$bin timeout 120 node build/js/seed.js
