#!/usr/bin/env bash
# tests/container/run.sh - smoke test of docker/Dockerfile with podman.
#
# Builds the image (on a debootstrap-made Debian bookworm base, since no
# registry is reachable), runs it on the host network bound to 127.0.0.1 only,
# and checks health, auth, a batch, the non-root user, PID-1 reaping, a clean
# SIGTERM stop and durability across containers on one named volume.
# Ends with "container: N passed, M failed"; exit 1 on any failure.
#
# Run from anywhere, as root. Environment:
#   JOBPOOL_CI_CACHE   cache folder (containers.conf, base rootfs tarball)
#                      [/var/cache/jobpool-ci]
#   JOBPOOL_CI_MIRROR  Debian mirror for debootstrap [http://deb.debian.org/debian]
#   JOBPOOL_CI_PORT    loopback port the container listens on [18480]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${JOBPOOL_CI_CACHE:-/var/cache/jobpool-ci}
MIRROR=${JOBPOOL_CI_MIRROR:-http://deb.debian.org/debian}
PORT=${JOBPOOL_CI_PORT:-18480}
BASE_IMAGE=localhost/bookworm-min:latest
IMAGE=localhost/jobpool:test
CTR=jobpool-ci-test
VOL=jobpool-ci-data
URL=http://127.0.0.1:$PORT
LOG=$CACHE/podman.log      # podman's own stderr during runs
TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')

pass=0
fail=0
ok()  { pass=$((pass + 1)); echo "ok   - $*"; }
bad() { fail=$((fail + 1)); echo "FAIL - $*"; }
check() { # check NAME COMMAND...: one line per check
	local name=$1; shift
	if "$@"; then ok "$name"; else bad "$name"; fi
}
summary() { echo "container: $pass passed, $fail failed"; }

# --- podman -----------------------------------------------------------------
if ! command -v podman >/dev/null || ! command -v runc >/dev/null \
   || ! command -v debootstrap >/dev/null; then
	if [ "$(id -u)" != 0 ] || ! DEBIAN_FRONTEND=noninteractive timeout 300 \
	     apt-get install -y -qq podman buildah runc debootstrap >/dev/null; then
		echo "container: 0 passed, 1 failed (cannot run: podman could not be installed)"
		exit 1
	fi
fi

# A private containers.conf (TOOLING.md 2.2): crun fails on this hybrid
# cgroup layout and the default rlimits exceed the sandbox's hard limits.
mkdir -p "$CACHE/conf"
cat > "$CACHE/conf/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$CACHE/conf/containers.conf
: > "$LOG"
if ! timeout 60 podman info >/dev/null 2>&1; then
	echo "container: 0 passed, 1 failed (cannot run: podman info fails)"
	exit 1
fi

cleanup() {
	timeout 60 podman rm -f -t 0 "$CTR" >/dev/null 2>&1 || true
	timeout 60 podman volume rm -f "$VOL" >/dev/null 2>&1 || true
	timeout 60 podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup     # leftovers of an interrupted run

# --- base image: debootstrap once, cached as a tarball ----------------------
t0=$(date +%s)
if ! podman image exists "$BASE_IMAGE"; then
	if [ ! -s "$CACHE/bookworm-min.tar" ]; then
		echo "# debootstrap bookworm (once; cached in $CACHE)"
		rm -rf "$CACHE/rootfs"
		timeout 600 debootstrap --variant=minbase bookworm "$CACHE/rootfs" "$MIRROR" \
			> "$CACHE/debootstrap.log" 2>&1 \
			|| { tail -20 "$CACHE/debootstrap.log"; bad "debootstrap base image"; summary; exit 1; }
		security=${MIRROR%/debian}/debian-security
		printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
			"$MIRROR" "$MIRROR" "$security" > "$CACHE/rootfs/etc/apt/sources.list"
		rm -rf "$CACHE"/rootfs/var/cache/apt/archives/*.deb "$CACHE"/rootfs/var/lib/apt/lists/*
		tar -C "$CACHE/rootfs" -cf "$CACHE/bookworm-min.tar.part" .
		mv "$CACHE/bookworm-min.tar.part" "$CACHE/bookworm-min.tar"
		rm -rf "$CACHE/rootfs"
	fi
	timeout 120 podman import --quiet --change 'CMD ["/bin/bash"]' "$CACHE/bookworm-min.tar" \
		"$BASE_IMAGE" >/dev/null
fi
echo "# base image ready in $(( $(date +%s) - t0 )) s"

# --- build ------------------------------------------------------------------
t0=$(date +%s)
if (cd "$ROOT" && timeout 900 podman build --network=host --format docker \
      --build-arg BASE=$BASE_IMAGE -f docker/Dockerfile -t "$IMAGE" .) \
      > "$CACHE/build.log" 2>&1; then
	ok "image builds ($(( $(date +%s) - t0 )) s, $(podman image inspect --format '{{.Size}}' "$IMAGE" \
		| awk '{printf "%.0f MB", $1 / 1e6}'))"
else
	tail -30 "$CACHE/build.log"
	bad "image builds (log: $CACHE/build.log)"
	summary
	exit 1
fi

# --- run ----------------------------------------------------------------------
start() { # start the container on the named volume; wait for /healthz
	# podman logs errors about systemd healthcheck timers on hosts without
	# systemd (harmless): keep podman's own stderr in $LOG.
	timeout 60 podman run -d --name "$CTR" --network=host \
		-e JOBPOOL_LISTEN=127.0.0.1:$PORT -e JOBPOOL_TOKEN="$TOKEN" \
		-v "$VOL":/data "$IMAGE" >/dev/null 2>>"$LOG" || return 1
	local i
	for i in $(seq 1 100); do
		[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/healthz")" = 200 ] \
			&& return 0
		sleep 0.2
	done
	return 1
}
code() { # code [CURL ARGS...] URL: the HTTP status
	curl -s -o /dev/null -w '%{http_code}' --max-time 15 "$@" || true
}
auth=(-H "Authorization: Bearer $TOKEN")

if start; then
	ok "container starts, GET /healthz is 200"
else
	bad "container starts, GET /healthz is 200"
	timeout 30 podman logs "$CTR" 2>&1 | tail -20 || true
	summary
	exit 1
fi

ready() { # /readyz turns 200 once every worker is up; bounded wait
	local i
	for i in $(seq 1 50); do
		[ "$(code "${auth[@]}" "$URL/readyz")" = 200 ] && return 0
		sleep 0.2
	done
	return 1
}
check "GET /readyz with the token is 200 (every worker up)" ready
check "GET /v1/batches without the token is 401" \
	test "$(code "$URL/v1/batches")" = 401
check "GET /v1/batches with the token is 200" \
	test "$(code "${auth[@]}" "$URL/v1/batches")" = 200

body=$(curl -s --max-time 15 -w '\n%{http_code}' "${auth[@]}" \
	-H 'Content-Type: application/json' "$URL/v1/batches" --data-binary \
	'{"name":"container-smoke","jobs":[{"kind":"echo","args":{"value":"hi"}},{"kind":"sleep","args":{"seconds":0.2}}]}' \
	|| true)
batch=$(sed -n '1s/.*"id":"\(b_[0-9a-z]*\)".*/\1/p' <<<"$body")
check "POST /v1/batches with the token is 201" \
	test "$(tail -n1 <<<"$body")" = 201 -a -n "$batch"

state() { # state: the batch's state, long-polling up to $1 s
	curl -s --max-time $(( $1 + 10 )) "${auth[@]}" "$URL/v1/batches/$batch?wait=$1" \
		| sed -n 's/.*"state":"\([a-z_]*\)".*/\1/p' | head -n1
}
check "batch $batch ends succeeded" test "$(state 10)" = succeeded

check "jobpoold runs as uid 10001 (id -u, /proc/1/status)" bash -c '
	[ "$(timeout 30 podman exec "$1" id -u)" = 10001 ] &&
	timeout 30 podman exec "$1" cat /proc/1/status | grep -Eq "^Uid:[[:space:]]+10001[[:space:]]"' _ "$CTR"
check "jobpoold is PID 1" \
	test "$(timeout 30 podman exec "$CTR" cat /proc/1/comm)" = jobpoold
check "/data is owned by jobpool and holds the database" \
	test "$(timeout 30 podman exec "$CTR" stat -c '%u %s' /data/jobpool.db | cut -d' ' -f1)" = 10001

# PID 1 must reap orphans: a child of a "podman exec" shell is reparented to
# the namespace's init (jobpoold) when the shell exits; once it exits it must
# not stay a zombie.
reaps() {
	local pid ppid i st
	pid=$(timeout 30 podman exec "$CTR" bash -c 'sleep 1 >/dev/null 2>&1 & echo $!') || return 1
	ppid=$(timeout 30 podman exec "$CTR" awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null) \
		|| return 1
	[ "$ppid" = 1 ] || { echo "# orphan $pid has PPid $ppid, not 1"; return 1; }
	for i in $(seq 1 50); do
		st=$(timeout 30 podman exec "$CTR" cat "/proc/$pid/stat" 2>/dev/null || true)
		[ -z "$st" ] && return 0
		sleep 0.1
	done
	echo "# orphan $pid still there: $st"
	return 1
}
check "an orphan reparented to PID 1 is reaped (no zombie)" reaps

if timeout 60 podman healthcheck run "$CTR" >/dev/null 2>&1; then
	ok "image HEALTHCHECK passes"
else
	bad "image HEALTHCHECK passes"
fi

# Stop while a job runs: SIGTERM to PID 1 must drain (the job finishes, not
# killed and re-queued) and exit 0, well inside podman's 40 s grace.
post() { # post JSON: prints the new batch id, or nothing
	curl -s --max-time 15 "${auth[@]}" -H 'Content-Type: application/json' \
		"$URL/v1/batches" --data-binary "$1" \
		| sed -n '1s/.*"id":"\(b_[0-9a-z]*\)".*/\1/p' || true
}
running() { # running ID: wait until the batch has a running job (bounded)
	local i
	for i in $(seq 1 50); do
		curl -s --max-time 5 "${auth[@]}" "$URL/v1/batches/$1" \
			| grep -q '"running":[1-9]' && return 0
		sleep 0.1
	done
	return 1
}
busy=$(post '{"name":"drain","jobs":[{"kind":"sleep","args":{"seconds":1.5}}]}')
check "a 1.5 s job ($busy) is running before the stop" running "$busy"
t0=$(date +%s%N)
timeout 60 podman stop -t 40 "$CTR" >/dev/null 2>>"$LOG" || true
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
exit_code=$(timeout 30 podman inspect --format '{{.State.ExitCode}}' "$CTR" || echo '?')
check "podman stop -t 40: exit code 0 after draining (${ms} ms)" \
	test "$exit_code" = 0 -a "$ms" -ge 500 -a "$ms" -lt 10000
timeout 30 podman logs "$CTR" > "$CACHE/jobpoold.log" 2>&1 || true
check "the logs show a drain and a clean stop" bash -c \
	'grep -q "draining" "$1" && tail -n1 "$1" | grep -q "stopped"' _ "$CACHE/jobpoold.log"
check "the logs are short (no worker restart loop)" \
	test "$(wc -l < "$CACHE/jobpoold.log")" -lt 50

# A new container on the same volume sees the batch: durability across
# container restarts.
timeout 60 podman rm -f -t 0 "$CTR" >/dev/null 2>>"$LOG"
if start; then
	check "a new container on the same volume still has $batch (succeeded)" \
		test "$(state 0)" = succeeded
	batch=$busy
	check "the job running at the stop finished during the drain ($busy succeeded)" \
		test "$(state 0)" = succeeded
	timeout 60 podman stop -t 40 "$CTR" >/dev/null 2>>"$LOG" || true
	check "second container stops with exit code 0" \
		test "$(timeout 30 podman inspect --format '{{.State.ExitCode}}' "$CTR" || echo '?')" = 0
else
	bad "a new container on the same volume starts"
	timeout 30 podman logs "$CTR" 2>&1 | tail -20 || true
fi

summary
[ "$fail" = 0 ]
