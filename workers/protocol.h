/* protocol.h - the one header shared by jobpoold and jobpool-worker.
 *
 * The server starts each worker as `jobpool-worker --parent PID
 * [--allow-command]`.  Only with --allow-command does the worker run
 * command jobs; without it a "run" of kind "command" is answered with a
 * failed "done" whose error names --allow-command, and nothing is started.
 * The flag is in the command line, not in a message, so no message can turn
 * it on: a job stored by a server that had the flag and read again by one
 * without it (a restart) never runs.
 *
 * The server and each worker talk over a SOCK_SEQPACKET socketpair that the
 * worker finds as file descriptor 3.  SEQPACKET keeps message boundaries, so
 * one send() is one message and there is no framing to get wrong.  Every
 * message is one JSON object (UTF-8 text, no NUL) whose "t" member names it:
 *
 *   worker -> server  {"t":"ready","pid":N}
 *   server -> worker  {"t":"run","job":"j_…","kind":"sleep","args":{…},
 *                      "grace_ms":N,"output_cap":N}
 *   server -> worker  {"t":"cancel"}
 *   worker -> server  {"t":"out","job":"j_…","fd":1|2,"data":"…"}
 *   worker -> server  {"t":"done","job":"j_…","ok":true|false,
 *                      "result":{…}|null,"error":"…"|null,
 *                      "run_us":N,"user_us":N,"sys_us":N,"maxrss_kb":N,
 *                      "exit_code":N|null,"signal":N|null,
 *                      "killed":true|false,"truncated":true|false}
 *
 * A worker runs one job at a time and answers every "run" with the job's
 * "out" messages, if any, then exactly one "done".  A command's "out"
 * messages come while it runs, as its output arrives (so clients can
 * follow it), each valid UTF-8; the stored output is all of them end to
 * end, so none repeats what an earlier one said.
 *
 * Short jobs travel in groups, so that a job costs no message, context
 * switch or database turn of its own:
 *
 *   server -> worker  {"t":"group","jobs":[{"job":"j_…","kind":"noop",
 *                      "args":{…}}, …]}
 *   server -> worker  {"t":"drop","job":"j_…"}
 *   worker -> server  {"t":"started","job":"j_…","started_us":N,"run_us":N}
 *   worker -> server  {"t":"results","jobs":[{"job":"j_…","ok":…,
 *                      "started_us":N, …the members of "done"…}
 *                      | {"job":"j_…","dropped":true}, …]}
 *
 * group: up to PROTO_GROUP_MAX jobs of function kinds (never "command"),
 * run in order.  A group may come while another is still running; its
 * jobs queue behind.
 *
 * drop: the job must not start.  The worker reads its channel before it
 * starts each job of a group; a job it has not started then is answered
 * {"job":…,"dropped":true}.  A drop for a job that started already, or
 * that the worker does not hold, changes nothing: the job's real outcome
 * comes as usual.
 *
 * results: the outcomes of jobs of groups, in the order they ran, each
 * with started_us, the wall-clock start (µs since the epoch) taken with the
 * monotonic reading behind run_us, so started + run_us is the end.  The
 * worker sends them when it has no group job left, before a message would
 * pass PROTO_MAX_MSG, and before a "started".
 *
 * started: a job of a group has run for a millisecond: the worker says so
 * (from a second thread, since a function kind does not return until it is
 * done), after the results of every job before it.  So the server always
 * knows which job a worker runs once it runs long enough to matter: for a
 * cancel, which kills the worker, and to show the job running.  run_us is
 * how long it has run so far.
 *
 * run: grace_ms (default 2000, >= 0) and output_cap (default 1048576,
 * >= 0) may be left out; only the command kind uses them.  grace_ms is
 * the wait between SIGTERM and SIGKILL on a cancel (0: SIGKILL at once);
 * output_cap is the bytes kept of each of stdout and stderr, after the
 * conversion to UTF-8 too.
 *
 * cancel: meaningful only while a command job runs: the worker SIGTERMs
 * the job's process group, SIGKILLs it grace_ms later, and the job ends
 * with "killed":true.  A cancel that arrives while no job runs, or during
 * a function kind (which does not read the channel; the server kills the
 * worker itself for those), is read later between jobs and ignored.  Any
 * other message while a job runs is a protocol error (the worker exits
 * with status 2).  Closing the channel during a command job cancels it.
 *
 * out: a command job's captured output, sent after the job ended and
 * before its "done": all of fd 1 (stdout) in order, then all of fd 2
 * (stderr); a stream with no output sends none.  data is valid UTF-8
 * (invalid bytes and NUL were replaced by U+FFFD) cut at character
 * boundaries; concatenated in order, the chunks of one fd are the stream.
 * Each chunk's data is at most 64 KiB once JSON-escaped, so every message
 * stays far below PROTO_MAX_MSG.
 *
 * done: ok is false when the job failed; error then says why.  A command
 * job that ran has a result {"exit_code":N|null} even when it failed (a
 * non-zero exit, a signal, a cancel); result is null when it could not
 * start ("cannot run argv0: …").  exit_code is the command's exit status,
 * signal the number of the signal that killed it, each null otherwise and
 * always null for function kinds; killed is true when a cancel (or a
 * closed channel) stopped it; truncated when output passed output_cap.
 * user_us/sys_us/maxrss_kb are, for a command job, the command's own
 * process as wait4() reported it (its waited-for descendants included;
 * ru_maxrss counts from the fork, so it is at least the worker's RSS);
 * for function kinds, the CPU the worker spent on the job (a getrusage
 * delta) and the worker's peak resident set so far.  run_us is wall time.
 *
 * A worker that dies (crash, kill, exit) simply closes its end; the server
 * learns the outcome from wait4().  The worker is a child subreaper: a
 * command's processes that escaped its group are reparented to it and
 * killed when the job ends, so no process of a command job outlives its
 * "done".  If the worker itself dies mid-job, only the command's direct
 * child is sure to die with it (PR_SET_PDEATHSIG).
 */
#ifndef JOBPOOL_PROTOCOL_H
#define JOBPOOL_PROTOCOL_H

/* The worker's end of the channel. */
#define PROTO_FD 3

/* Largest message either side sends or accepts.  Kept well below the
 * default socket buffer (net.core.wmem_default, 208 KiB) so a SEQPACKET send
 * never fails with EMSGSIZE without needing SO_SNDBUFFORCE. */
#define PROTO_MAX_MSG (160 * 1024)

/* Most jobs in one "group" message. */
#define PROTO_GROUP_MAX 64

/* Largest serialized "args" (and so "echo" result) a job may carry. */
#define PROTO_MAX_ARGS (64 * 1024)

#endif
