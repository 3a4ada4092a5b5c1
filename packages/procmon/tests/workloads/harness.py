"""Runs workload jobs and reports waitpid() ground truth as JSON.

    python harness.py JOBS.json RESULT.json WORKSPACE_ROOT

Each job: {"name", "argv", "cwd" (relative to WORKSPACE_ROOT), "core": "unlimited"|0,
"kill": bool}. Each result: the job's name, the child's pid (in the harness's pid
namespace), the raw wait status, and wall-clock times around fork and wait. Also reports
the harness's own pid, pid namespace inode and hostname. Standard library only: it runs
inside the test "container" with whatever python launched it.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import sys
import time


def run(job: dict[str, object], root: str) -> dict[str, object]:
    argv = [str(a) for a in job["argv"]]  # type: ignore[attr-defined]
    cwd = os.path.join(root, str(job.get("cwd", ".")))
    core = job.get("core", 0)
    # The write end closes on a successful exec: EOF on the read end means "exec done".
    r, w = os.pipe2(os.O_CLOEXEC)
    t0 = time.time()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            limit = resource.RLIM_INFINITY if core == "unlimited" else int(str(core))
            resource.setrlimit(resource.RLIMIT_CORE, (limit, limit))
            os.chdir(cwd)
            os.execvp(argv[0], argv)
        except BaseException as exc:
            os.write(w, repr(exc).encode())
        os._exit(127)
    os.close(w)
    err = os.read(r, 4096)
    os.close(r)
    if err:
        raise RuntimeError(f"job {job['name']}: exec failed: {err.decode()}")
    if job.get("kill"):
        time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    t1 = time.time()
    return {"name": job["name"], "pid": pid, "status": status, "t0": t0, "t1": t1}


def main() -> None:
    jobs_path, result_path, root = sys.argv[1:4]
    with open(jobs_path) as f:
        jobs = json.load(f)
    results = [run(job, root) for job in jobs]
    out = {
        "pid": os.getpid(),
        "pidns": os.stat("/proc/self/ns/pid").st_ino,
        "mntns": os.stat("/proc/self/ns/mnt").st_ino,
        "hostname": socket.gethostname(),
        "results": results,
    }
    with open(result_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
