"""sidelog_job.py - the program a cluster test's `command` job runs.

    python3 -S -I sidelog_job.py LOG TAG SECONDS BEAT

Appends to LOG (O_APPEND; each line is one write(2) well under PIPE_BUF, so
lines from concurrent attempts never mix):

    S <job> <pid> <ns> <tag> <ancestors>   when the attempt starts
    T <job> <pid> <ns> <tag> <ancestors>   every BEAT seconds while it runs
                                           (BEAT 0: no T lines)
    E <job> <pid> <ns> <tag> <ancestors>   when it ends normally, then exit 0

<job> is the job id from JOBPOOL_JOB (<instance>/<job id>), <pid> this
process (one process per attempt), <ns> the wall clock in ns, <tag> the
test's own name of the job, <ancestors> the parent pid chain (worker, then
jobpoold, ...) joined by commas, which tells the node the attempt ran on.
Killed at any point, it leaves S and T lines and no E: the last line is the
last moment it is known to have run.
"""

import os
import sys
import time


def ancestors(pid, depth=4):
    out = []
    for _ in range(depth):
        try:
            with open("/proc/%d/stat" % pid) as f:
                data = f.read()
            pid = int(data[data.rfind(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if pid <= 1:
            break
        out.append(pid)
    return out


def main():
    log, tag, seconds, beat = sys.argv[1], sys.argv[2], \
        float(sys.argv[3]), float(sys.argv[4])
    job = os.environ.get("JOBPOOL_JOB", "").rsplit("/", 1)[-1] or "-"
    pid = os.getpid()
    chain = ",".join(str(p) for p in ancestors(pid)) or "0"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def line(kind):
        os.write(fd, ("%s %s %d %d %s %s\n" % (kind, job, pid, time.time_ns(),
                                               tag, chain)).encode())
    line("S")
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(left, beat) if beat > 0 else left)
        if beat > 0 and end - time.monotonic() > 0:
            line("T")
    line("E")
    os.close(fd)


if __name__ == "__main__":
    main()
