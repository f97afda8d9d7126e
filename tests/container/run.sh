#!/usr/bin/env bash
# tests/container/run.sh - smoke test of docker/Dockerfile with podman.
#
# Builds the image (on a debootstrap-made Debian bookworm base, since no
# registry is reachable), runs it on the host network bound to 127.0.0.1 only,
# and checks health, auth, a batch, the non-root user, PID-1 reaping, a clean
# SIGTERM stop and durability across containers on one named volume.
# Then the shape of docker/compose.yaml's `cluster` profile, without a compose
# tool: a PostgreSQL 15 container (docker/postgres.Dockerfile on the same
# base) and three jobpool containers on it, all on the host network bound to
# 127.0.0.1; checks GET /v1/nodes, a batch spread over the nodes and read
# from another one, and a node killed mid-batch whose jobs the others finish.
# Ends with "container: N passed, M failed"; exit 1 on any failure.
#
# Run from anywhere, as root. Environment:
#   JOBPOOL_CI_CACHE   cache folder (containers.conf, base rootfs tarball)
#                      [/var/cache/jobpool-ci]
#   JOBPOOL_CI_MIRROR  Debian mirror for debootstrap [http://deb.debian.org/debian]
#   JOBPOOL_CI_PORT    loopback port the container listens on [18480]; the
#                      cluster takes the next free ones above it
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${JOBPOOL_CI_CACHE:-/var/cache/jobpool-ci}
MIRROR=${JOBPOOL_CI_MIRROR:-http://deb.debian.org/debian}
PORT=${JOBPOOL_CI_PORT:-18480}
BASE_IMAGE=localhost/bookworm-min:latest
IMAGE=localhost/jobpool:test
CTR=jobpool-ci-test
VOL=jobpool-ci-data
PG_IMAGE=localhost/jobpool-ci-postgres:test
PG_CTR=jobpool-ci-pg
PG_VOL=jobpool-ci-pgdata
NODES=(node1 node2 node3)          # container jobpool-ci-<name>, --node-name <name>
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
	local n
	for n in "${NODES[@]}"; do    # -v: the anonymous volume of the image's /data
		timeout 60 podman rm -f -v -t 0 "jobpool-ci-$n" >/dev/null 2>&1 || true
	done
	timeout 60 podman rm -f -v -t 0 "$PG_CTR" >/dev/null 2>&1 || true
	timeout 60 podman rm -f -t 0 "$CTR" >/dev/null 2>&1 || true
	timeout 60 podman volume rm -f "$VOL" "$PG_VOL" >/dev/null 2>&1 || true
	timeout 60 podman rmi -f "$IMAGE" "$PG_IMAGE" >/dev/null 2>&1 || true
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

# --- cluster: three nodes on one PostgreSQL (compose.yaml's `cluster`) --------
# As the compose profile runs them, but on the host network bound to
# 127.0.0.1: the PostgreSQL container as the postgres user with password
# (scram-sha-256) logins, the nodes from the image above with --db in
# JOBPOOL_DB (the password stays out of ps), a token, --node-name and
# --node-lease 4s.  Every wait is bounded.
free_port() { # free_port FROM: the first port >= FROM that nobody listens on
	local p=$1
	while [ "$p" -lt 65000 ]; do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && ! taken "$p"; then
			echo "$p"
			return 0
		fi
		p=$((p + 1))
	done
	return 1
}
picked=" $PORT "
taken() { [[ $picked == *" $1 "* ]]; }
pick() { # pick VAR: a free port above $PORT not picked before, into VAR
	local p
	p=$(free_port $((PORT + 1))) || return 1
	picked+="$p "
	printf -v "$1" %s "$p"
}

cluster_run() {
	local t0 pg_port pg_pass name port
	t0=$(date +%s)
	if (cd "$ROOT/docker" && timeout 600 podman build --network=host --format docker \
	      --build-arg BASE=$BASE_IMAGE -f postgres.Dockerfile -t "$PG_IMAGE" .) \
	      > "$CACHE/build-postgres.log" 2>&1; then
		ok "PostgreSQL 15 image builds ($(( $(date +%s) - t0 )) s)"
	else
		tail -20 "$CACHE/build-postgres.log"
		bad "PostgreSQL 15 image builds (log: $CACHE/build-postgres.log)"
		return 0
	fi

	local -A nport
	pick pg_port || { bad "free loopback ports for the cluster"; return 0; }
	for name in "${NODES[@]}"; do
		pick "nport[$name]" || { bad "free loopback ports for the cluster"; return 0; }
	done
	pg_pass=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
	pg_ready() {
		timeout 10 podman exec "$PG_CTR" pg_isready -q -h 127.0.0.1 -p "$pg_port" \
			-U jobpool -d jobpool 2>/dev/null
	}
	if timeout 60 podman run -d --name "$PG_CTR" --network=host \
	      -e POSTGRES_USER=jobpool -e POSTGRES_DB=jobpool -e POSTGRES_PASSWORD="$pg_pass" \
	      -v "$PG_VOL":/var/lib/postgresql/data "$PG_IMAGE" \
	      -p "$pg_port" -c listen_addresses=127.0.0.1 \
	      -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
	      >/dev/null 2>>"$LOG" && retry 150 0.2 pg_ready; then
		ok "PostgreSQL container answers pg_isready on 127.0.0.1:$pg_port"
	else
		bad "PostgreSQL container answers pg_isready on 127.0.0.1:$pg_port"
		timeout 30 podman logs "$PG_CTR" 2>&1 | tail -20 || true
		return 0
	fi
	check "PostgreSQL runs as the postgres user" \
		test "$(timeout 30 podman exec "$PG_CTR" id -un)" = postgres
	check "PostgreSQL refuses a wrong password over TCP" bash -c '
		! timeout 30 podman exec -e PGPASSWORD=wrong "$1" psql -h 127.0.0.1 -p "$2" \
			-U jobpool -d jobpool -Atc "SELECT 1" >/dev/null 2>&1' _ "$PG_CTR" "$pg_port"

	local -A nurl
	for name in "${NODES[@]}"; do
		port=${nport[$name]}
		nurl[$name]=http://127.0.0.1:$port
		timeout 60 podman run -d --name "jobpool-ci-$name" --network=host \
			-e JOBPOOL_LISTEN="127.0.0.1:$port" -e JOBPOOL_TOKEN="$TOKEN" \
			-e JOBPOOL_DB="postgresql://jobpool:$pg_pass@127.0.0.1:$pg_port/jobpool" \
			"$IMAGE" --node-name "$name" --node-lease 4s >/dev/null 2>>"$LOG" || true
	done
	node_up() { [ "$(code "${auth[@]}" "$1/readyz")" = 200 ]; }
	local up=1
	for name in "${NODES[@]}"; do
		retry 100 0.2 node_up "${nurl[$name]}" || {
			up=0
			echo "# $name is not ready; its log:"
			timeout 30 podman logs "jobpool-ci-$name" 2>&1 | tail -10 || true
		}
	done
	if [ "$up" = 1 ]; then
		ok "${#NODES[@]} nodes on PostgreSQL start, GET /readyz is 200 on each"
	else
		bad "${#NODES[@]} nodes on PostgreSQL start, GET /readyz is 200 on each"
		return 0
	fi
	local n1=${nurl[node1]} n2=${nurl[node2]}

	nodes_seen() { # nodes_seen URL: the names GET /v1/nodes lists, sorted, one line
		curl -s --max-time 5 "${auth[@]}" "$1/v1/nodes" \
			| grep -o '"name":"[^"]*"' | cut -d'"' -f4 | sort | paste -sd' ' - || true
	}
	all_listed() { [ "$(nodes_seen "$n1")" = "node1 node2 node3" ]; }
	retry 50 0.2 all_listed || true
	check "GET /v1/nodes on node1 lists node1 node2 node3 ($(nodes_seen "$n1"))" all_listed

	# cpost URL JSON: the new batch's id, or nothing; cstate URL ID WAIT: its state
	cpost() {
		curl -s --max-time 15 "${auth[@]}" -H 'Content-Type: application/json' \
			"$1/v1/batches" --data-binary "$2" \
			| sed -n '1s/.*"id":"\(b_[0-9a-z]*\)".*/\1/p' || true
	}
	cstate() {
		curl -s --max-time $(( $3 + 10 )) "${auth[@]}" "$1/v1/batches/$2?wait=$3" \
			| sed -n 's/.*"state":"\([a-z_]*\)".*/\1/p' | head -n1 || true
	}
	jobs_of() { # jobs_of URL ID [QUERY]: the batch's jobs (30 fit one page)
		curl -s --max-time 15 "${auth[@]}" "$1/v1/batches/$2/jobs?limit=1000${3:+&$3}" || true
	}
	workers() { # workers JOBS_JSON: the distinct worker.node values, one line
		grep -o '"node":"[^"]*"' <<<"$1" | cut -d'"' -f4 | sort -u | paste -sd' ' - || true
	}
	sleeps() { # sleeps N SECONDS [EXTRA JOB FIELDS]: a batch body of N sleep jobs
		local i body='{"name":"cluster","jobs":['
		for ((i = 0; i < $1; i++)); do
			body+='{"kind":"sleep","args":{"seconds":'"$2"'}'"${3:+,$3}"'}'
			[ "$i" -lt $(($1 - 1)) ] && body+=,
		done
		echo "$body]}"
	}

	# 30 short jobs on node1: they succeed, and more than one node ran them.
	local b st w
	b=$(cpost "$n1" "$(sleeps 30 0.2)")
	check "POST of 30 sleep jobs on node1 is 201 ($b)" test -n "$b"
	if [ -n "$b" ]; then
		st=$(cstate "$n1" "$b" 30)
		check "the batch ends succeeded on node1 (state $st)" test "$st" = succeeded
		w=$(workers "$(jobs_of "$n1" "$b")")
		check "its jobs ran on at least two nodes (worker.node: $w)" \
			test "$(wc -w <<<"$w")" -ge 2
		st=$(cstate "$n2" "$b" 0)
		check "GET of the batch on node2 says succeeded too" test "$st" = succeeded
	fi

	# Kill node2 (SIGKILL to its jobpoold, and so to its workers) while it runs
	# jobs: its lease lapses (4 s), another node re-queues them, and every job
	# of the batch ends succeeded within 20 s of the kill.
	b=$(cpost "$n1" "$(sleeps 12 2 '"max_attempts":2')")
	check "POST of 12 two-second jobs (max_attempts 2) on node1 is 201 ($b)" test -n "$b"
	[ -n "$b" ] || return 0
	on_node2() { grep -q '"node":"node2"' <<<"$(jobs_of "$n1" "$b" state=running)"; }
	check "node2 runs some of them" retry 100 0.1 on_node2
	local t_kill
	t_kill=$(date +%s%N)
	timeout 30 podman kill "jobpool-ci-node2" >/dev/null 2>>"$LOG" || true
	st=$(cstate "$n1" "$b" 20)
	local ms=$(( ($(date +%s%N) - t_kill) / 1000000 ))
	check "after podman kill of node2 every job ends succeeded (batch $st, ${ms} ms after the kill)" \
		test "$st" = succeeded -a "$ms" -le 20000
	local again
	again=$(jobs_of "$n1" "$b" | grep -o '"attempts":2' | wc -l || true)
	check "the jobs node2 was running were run again ($again jobs with a second attempt)" \
		test "$again" -ge 1
	gone() { [ "$(nodes_seen "$n1")" = "node1 node3" ]; }
	retry 50 0.2 gone || true
	check "GET /v1/nodes on node1 then lists node1 node3 ($(nodes_seen "$n1"))" gone
}
retry() { # retry N SECONDS CMD...: run CMD up to N times, SECONDS apart, until it succeeds
	local n=$1 s=$2 i
	shift 2
	for ((i = 0; i < n; i++)); do
		"$@" && return 0
		sleep "$s"
	done
	return 1
}
cluster_run
for name in "${NODES[@]}"; do    # kept for a look after a failure
	timeout 30 podman logs "jobpool-ci-$name" > "$CACHE/cluster-$name.log" 2>&1 || true
done
timeout 30 podman logs "$PG_CTR" > "$CACHE/cluster-postgres.log" 2>&1 || true

summary
[ "$fail" = 0 ]
