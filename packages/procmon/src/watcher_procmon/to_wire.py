"""A completed process record (+ its captured sources and stderr) -> wire events.

Identity comes from the workspace mounted at the container root when it is known (the
files a run compiled belong to it; see mntns.py), else from the container's hostname. A
hostname naming another (or no) workspace than the mounted one never moves the run to that
student: it stays with the mounted workspace, flagged ``identity_mismatch``. The
assignment comes from the container-visible cwd, else the first source file. A
``/workspace/<ws>/...`` path naming another workspace also sets ``identity_mismatch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from watcher_common.identity import (
    DEFAULT,
    ContainerPath,
    IdentityConfig,
    NotStudent,
    Workspace,
    parse_container_path,
    parse_hostname,
)
from watcher_common.wire import (
    MAX_ARGV_ITEMS,
    FileSnapshot,
    ProcessRun,
    SourceFile,
    new_event_id,
)
from watcher_procmon.classify import Classification
from watcher_procmon.diagnostics import BuildOutput
from watcher_procmon.records import ProcessRecord
from watcher_procmon.sources import SourceRead, container_path

AGENT = "procmon"
MAX_EXCERPT = 16 * 1024


@dataclass(frozen=True, slots=True)
class Origin:
    """Who ran a process and where (parsed once per exec)."""

    workspace: Workspace
    assignment: str | None
    mismatch: bool
    # why it is flagged: the hostname disagrees with the mounted workspace, or a path
    # names another workspace (None: not flagged)
    mismatch_cause: Literal["mount", "path"] | None = None


def _parse(path: str, ident: IdentityConfig, ws: Workspace) -> ContainerPath | None:
    parsed = parse_container_path(path, ident, ws) if path else None
    return parsed if isinstance(parsed, ContainerPath) else None


def origin(
    hostname: str,
    cwd: str,
    source_paths: list[str],
    ident: IdentityConfig = DEFAULT,
    mounted: Workspace | None = None,
) -> Origin | NotStudent:
    ws = parse_hostname(hostname, ident)
    by_mount = mounted is not None and ws != mounted
    if mounted is not None:
        ws = mounted  # the files are the mounted workspace's, whatever the hostname says
    if isinstance(ws, NotStudent):
        return ws
    parsed = [p for p in (_parse(x, ident, ws) for x in [cwd, *source_paths]) if p]
    from_cwd = _parse(cwd, ident, ws)
    first = from_cwd or (parsed[0] if parsed else None)
    by_path = any(p.workspace_mismatch for p in parsed)
    cause: Literal["mount", "path"] | None = "mount" if by_mount else "path" if by_path else None
    return Origin(ws, first.assignment if first else None, cause is not None, cause)


def source_file(read: SourceRead, run_assignment: str | None, ident: IdentityConfig) -> SourceFile:
    """Below the run's assignment when it is there, else the path seen in the container."""
    parsed = parse_container_path(read.path, ident)
    if isinstance(parsed, ContainerPath) and parsed.path and parsed.assignment == run_assignment:
        path = parsed.path
    else:
        path = read.path
    return SourceFile(path=path, sha256=read.sha256, size=read.size)


def snapshot(
    read: SourceRead,
    org: Origin,
    ts: datetime,
    node: str,
    version: str,
    ident: IdentityConfig,
) -> FileSnapshot | None:
    """The FileSnapshot for a read source (content goes to the outbox separately); None
    for a file outside every assignment, a binary, or one over the size cap."""
    if read.status != "ok" or read.sha256 is None or read.size is None:
        return None
    parsed = parse_container_path(read.path, ident, org.workspace)
    if not isinstance(parsed, ContainerPath) or not parsed.path:
        return None
    mtime = None
    if read.mtime_ns is not None:
        mtime = datetime.fromtimestamp(read.mtime_ns / 1e9, ts.tzinfo)
    return FileSnapshot(
        event_id=new_event_id(),
        node=node,
        agent=AGENT,
        agent_version=version,
        ts=ts,
        class_div=org.workspace.class_div,
        student_id=org.workspace.student_id,
        assignment=parsed.assignment,
        path=parsed.path,
        sha256=read.sha256,
        size=read.size,
        mtime=mtime,
        source="procmon",
    )


def process_run(
    rec: ProcessRecord,
    cls: Classification,
    org: Origin,
    sources: list[SourceRead],
    build: BuildOutput | None,
    node: str,
    version: str,
    ident: IdentityConfig = DEFAULT,
) -> ProcessRun:
    ev = rec.exec
    output = cls.output
    if output is not None and ev.cwd:
        output = container_path(ev.cwd, output) or output
    excerpt = None
    if build is not None and build.text:
        excerpt = build.text[:MAX_EXCERPT]
    return ProcessRun(
        event_id=new_event_id(),
        node=node,
        agent=AGENT,
        agent_version=version,
        ts=rec.end or rec.start,
        class_div=org.workspace.class_div,
        student_id=org.workspace.student_id,
        assignment=org.assignment,
        run_kind=cls.run_kind,
        tool=cls.tool[:64],
        exe=ev.exe,
        filename=ev.filename,
        argv=list(ev.argv[:MAX_ARGV_ITEMS]),
        argv_truncated=ev.argv_truncated or len(ev.argv) > MAX_ARGV_ITEMS,
        argv_len=ev.argv_len,
        cwd=ev.cwd,
        hostname=ev.nodename,
        pid=ev.tgid,
        ppid=ev.ppid,
        uid=ev.uid,
        cgroup_id=ev.cgroup_id,
        pidns=ev.pidns,
        mntns=ev.mntns,
        start=rec.start,
        end=rec.end,
        exit_code=rec.exit_code,
        signal=rec.signal,
        core_dumped=rec.core_dumped,
        source_files=[source_file(s, org.assignment, ident) for s in sources][:1024],
        output_path=output,
        diagnostics=build.diagnostics if build else [],
        stderr_excerpt=excerpt,
        identity_mismatch=org.mismatch,
    )
