/* protocol.h - the one header shared by jobpoold and jobpool-worker.
 *
 * The server and each worker talk over a SOCK_SEQPACKET socketpair that the
 * worker finds as file descriptor 3.  SEQPACKET keeps message boundaries, so
 * one send() is one message and there is no framing to get wrong.  Every
 * message is one JSON object (UTF-8 text, no NUL) whose "t" member names it:
 *
 *   worker -> server  {"t":"ready","pid":N}
 *   server -> worker  {"t":"run","job":"j_…","kind":"sleep","args":{…}}
 *   worker -> server  {"t":"done","job":"j_…","ok":true|false,
 *                      "result":{…}|null,"error":"…"|null,
 *                      "run_us":N,"user_us":N,"sys_us":N,"maxrss_kb":N}
 *
 * A worker runs one job at a time and answers every "run" with exactly one
 * "done".  user_us/sys_us are the CPU the worker spent on that job (a
 * getrusage delta); maxrss_kb is the worker's peak resident set so far.
 * A worker that dies (crash, kill, exit) simply closes its end; the server
 * learns the outcome from wait4().
 */
#ifndef JOBPOOL_PROTOCOL_H
#define JOBPOOL_PROTOCOL_H

/* The worker's end of the channel. */
#define PROTO_FD 3

/* Largest message either side sends or accepts.  Kept well below the
 * default socket buffer (net.core.wmem_default, 208 KiB) so a SEQPACKET send
 * never fails with EMSGSIZE without needing SO_SNDBUFFORCE. */
#define PROTO_MAX_MSG (160 * 1024)

/* Largest serialized "args" (and so "echo" result) a job may carry. */
#define PROTO_MAX_ARGS (64 * 1024)

#endif
