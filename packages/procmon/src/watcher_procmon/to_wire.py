"""A completed process record (+ its captured sources and stderr) -> wire events.

Identity comes from the workspace mounted at the container root when it is known (the
files a run compiled belong to it; see mntns.py), else from the container's hostname. A
hostname naming another (or no) workspace than the mounted one never moves the run to that
student: it stays with the mounted workspace, flagged ``identity_mismatch``. The
assignment comes from the container-visible cwd, else the first source file. A
``/workspace/<ws>/...`` path naming another workspace also sets ``identity_mismatch``.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring as _s
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
from watcher_common.outbox import EncodedEvent
from watcher_common.wire import (
    MAX_ARGV_ITEMS,
    MAX_INLINE_CONTENT,
    SHA256_RE,
    FileSnapshot,
    ProcessRun,
    SourceFile,
    new_event_id,
    rel_path_ok,
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


# A pure function of its arguments, asked three times per compiled file (origin, snapshot,
# the run's source_files) and again at every compile of the same files.
_parse_path = functools.lru_cache(maxsize=4096)(parse_container_path)


def _parse(path: str, ident: IdentityConfig, ws: Workspace) -> ContainerPath | None:
    parsed = _parse_path(path, ident, ws) if path else None
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


def _source_path(read: SourceRead, run_assignment: str | None, ident: IdentityConfig) -> str:
    parsed = _parse_path(read.path, ident)
    if isinstance(parsed, ContainerPath) and parsed.path and parsed.assignment == run_assignment:
        return parsed.path
    return read.path


def source_file(read: SourceRead, run_assignment: str | None, ident: IdentityConfig) -> SourceFile:
    """Below the run's assignment when it is there, else the path seen in the container."""
    return SourceFile(
        path=_source_path(read, run_assignment, ident), sha256=read.sha256, size=read.size
    )


def snapshot_target(read: SourceRead, org: Origin, ident: IdentityConfig) -> ContainerPath | None:
    """Where a read source is snapshotted (assignment, path below it); None for a file
    outside every assignment, a binary, or one over the size cap."""
    if read.status != "ok" or read.sha256 is None or read.size is None:
        return None
    parsed = _parse_path(read.path, ident, org.workspace)
    if not isinstance(parsed, ContainerPath) or not parsed.path:
        return None
    return parsed


def _rel_path_ok(path: str) -> bool:
    # FileScoped's path rule and length; anything else: the model
    return len(path) <= _STR_MAX and rel_path_ok(path)


def snapshot_encoded(
    read: SourceRead,
    org: Origin,
    target: ContainerPath,
    ts: datetime,
    node: str,
    version: str,
) -> EncodedEvent | None:
    """The FileSnapshot of a read source with its content inline, as the outbox would
    store the model's (see prepare_event): the per-compile path skips pydantic. None when
    the content needs a blob or a value is outside what this path checks (use the model)."""
    ws = org.workspace
    content = read.content
    if (
        content is None
        or read.sha256 is None
        or not SHA256_RE.fullmatch(read.sha256)
        or len(content) > MAX_INLINE_CONTENT
        or len(content) != read.size
        or not _rel_path_ok(target.path)
        or not 1 <= len(target.assignment) <= 128
        or not 3 <= len(ws.class_div) <= 128
        or not 1 <= len(ws.student_id) <= 64
        or len(node) > 253
        or len(version) > 64
    ):
        return None
    event_id = new_event_id()
    mtime = ""
    if read.mtime_ns is not None:
        mtime = f',"mtime":"{_iso(datetime.fromtimestamp(read.mtime_ns / 1e9, ts.tzinfo))}"'
    body = (
        f'{{"event_id":"{event_id}","node":{_s(node)},"agent":"{AGENT}",'
        f'"agent_version":{_s(version)},"ts":"{_iso(ts)}","class_div":{_s(ws.class_div)},'
        f'"student_id":{_s(ws.student_id)},"assignment":{_s(target.assignment)},'
        f'"path":{_s(target.path)},"kind":"file.snapshot","sha256":"{read.sha256}",'
        f'"size":{len(content)},"content_b64":"{base64.b64encode(content).decode("ascii")}"'
        f'{mtime},"too_large":false,"reconciled":false,"source":"procmon"}}'
    )
    try:
        return EncodedEvent(event_id, "file.snapshot", body.encode())
    except UnicodeEncodeError:
        return None  # lone surrogates (undecodable bytes): the model path decides


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
    parsed = snapshot_target(read, org, ident)
    if parsed is None or read.sha256 is None or read.size is None:
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


# ---- the hot path: a run without build output, encoded directly ----------------------------
# At hundreds of execs/s (student programs, shell commands) validating and dumping the
# ProcessRun model was a third of the agent's CPU per exec. Every value below comes from
# the kernel record, the classifier or the identity parser; the checks that could fail for
# such values (lengths) are done here, and anything else takes the model path.
# test_to_wire.py checks the bodies against the model's own dump, field for field.

_STR_MAX = 4096  # exe, filename, cwd, output_path (StringConstraints of ProcessRun)


def _iso(dt: datetime) -> str:
    # pydantic writes UTC as "Z"
    s = dt.isoformat()
    return s[:-6] + "Z" if s.endswith("+00:00") else s


def _source_files(
    sources: list[SourceRead], assignment: str | None, ident: IdentityConfig
) -> str | None:
    """The JSON of ``source_files`` as the model dumps it (None fields left out); None
    when a path is outside the model's length limits."""
    items = []
    for read in sources[:1024]:
        path = _source_path(read, assignment, ident)
        if not 1 <= len(path) <= _STR_MAX or (read.size is not None and read.size < 0):
            return None
        item = f'{{"path":{_s(path)}'
        if read.sha256 is not None:
            if not SHA256_RE.fullmatch(read.sha256):
                return None
            item += f',"sha256":"{read.sha256}"'
        if read.size is not None:
            item += f',"size":{int(read.size)}'
        items.append(item + "}")
    return f"[{','.join(items)}]"


def process_run_encoded(
    rec: ProcessRecord,
    cls: Classification,
    org: Origin,
    node: str,
    version: str,
    sources: list[SourceRead] | None = None,
    ident: IdentityConfig = DEFAULT,
) -> EncodedEvent | None:
    """The ``ProcessRun`` of a run without build output (a compile with no stderr, any
    other program), as its wire JSON; None when a value is outside what this path checks
    (use :func:`process_run`)."""
    files = "[]"
    if sources:
        got = _source_files(sources, org.assignment, ident)
        if got is None:
            return None
        files = got
    ev = rec.exec
    ws = org.workspace
    assignment = org.assignment
    argv = ev.argv[:MAX_ARGV_ITEMS]
    output = cls.output
    if output is not None and ev.cwd:
        output = container_path(ev.cwd, output) or output
    if (
        len(ev.exe) > _STR_MAX
        or len(ev.filename) > _STR_MAX
        or len(ev.cwd) > _STR_MAX
        or len(ev.nodename) > 253
        or len(node) > 253
        or len(version) > 64
        or not 3 <= len(ws.class_div) <= 128
        or not 1 <= len(ws.student_id) <= 64
        or (assignment is not None and not 1 <= len(assignment) <= 128)
        or (output is not None and len(output) > _STR_MAX)
        or max(map(len, argv), default=0) > 1_000_000
    ):
        return None
    event_id = new_event_id()
    start = _iso(rec.start)
    end = None if rec.end is None else _iso(rec.end)
    parts = [
        f'{{"event_id":"{event_id}","node":{_s(node)},"agent":"{AGENT}",'
        f'"agent_version":{_s(version)},"ts":"{end or start}",'
        f'"class_div":{_s(ws.class_div)},"student_id":{_s(ws.student_id)},'
        '"kind":"process.run"'
    ]
    if assignment is not None:
        parts.append(f',"assignment":{_s(assignment)}')
    parts.append(
        f',"run_kind":"{cls.run_kind}","tool":{_s(cls.tool[:64])},"exe":{_s(ev.exe)},'
        f'"filename":{_s(ev.filename)},"argv":[{",".join(map(_s, argv))}],'
        f'"argv_truncated":{_B[ev.argv_truncated or len(ev.argv) > MAX_ARGV_ITEMS]},'
        f'"argv_len":{int(ev.argv_len)},"cwd":{_s(ev.cwd)},"hostname":{_s(ev.nodename)},'
        f'"pid":{int(ev.tgid)},"ppid":{int(ev.ppid)},"uid":{int(ev.uid)},'
        f'"cgroup_id":{int(ev.cgroup_id)},"pidns":{int(ev.pidns)},"mntns":{int(ev.mntns)},'
        f'"start":"{start}"'
    )
    if end is not None:
        parts.append(f',"end":"{end}"')
    for name, value in (("exit_code", rec.exit_code), ("signal", rec.signal)):
        if value is not None:
            parts.append(f',"{name}":{int(value)}')
    parts.append(f',"core_dumped":{_B[rec.core_dumped]},"source_files":{files}')
    if output is not None:
        parts.append(f',"output_path":{_s(output)}')
    parts.append(f',"diagnostics":[],"identity_mismatch":{_B[org.mismatch]},"source":"procmon"}}')
    try:
        body = "".join(parts).encode()
    except UnicodeEncodeError:
        return None  # lone surrogates (undecodable bytes): the model path decides
    return EncodedEvent(event_id, "process.run", body)


_B = {False: "false", True: "true"}
