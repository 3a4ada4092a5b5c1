"""Who a file, path or container belongs to: the one place that parses student identity.

A student workspace is a directory ``<subject>-<division>-<studentId>`` (parsed from the
right, so subjects may contain ``-``); assignments are directories below it whose name
fully matches a pattern (default ``hw<digits>``). Containers are named
``jcode-<workspace>[-<replicaset>-<pod>]`` and see the workspace under a few roots.

Parsers take any ``str`` and never raise: input that is not a student's gets a
:class:`NotStudent` with a human reason. Reasons quote only the offending part, never a
parsed student id (ids must not reach INFO logs). Names are kept byte-exact (spaces, ``#``,
``?``, ``@``, Korean); only ``.``/``..``/``//`` are normalised, lexically.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

__all__ = [
    "DEFAULT",
    "ContainerPath",
    "IdentityConfig",
    "NotStudent",
    "StudentPath",
    "Workspace",
    "compat_filename_candidates",
    "encode_compat_filename",
    "parse_container_path",
    "parse_hostname",
    "parse_workspace_dir",
    "parse_workspace_path",
    "relative_to_root",
]

# Wire limits (see wire.py): refusing here keeps a parsed identity always sendable.
_CLASS_DIV_MAX = 128
_STUDENT_ID_MAX = 64
_ASSIGNMENT_MAX = 128

# Kubernetes limits a pod hostname to 63 characters; the kubelet may also trim a trailing
# "-" after cutting, so 62+ characters means "possibly truncated".
_HOSTNAME_MAX = 63
_MAYBE_TRUNCATED = _HOSTNAME_MAX - 1
# Suffix tokens as seen in practice (k8s and the test containers).
_SUFFIX_TOKEN = re.compile(r"[a-z0-9]+")
# What Kubernetes itself generates: replicaset hash and pod suffix drawn from its "safe"
# alphabet (no vowels; digits only 2456789), pod suffix exactly 5 characters.
_K8S_SAFE = "bcdfghjklmnpqrstvwxz2456789"
_K8S_RS_HASH = re.compile(f"[{_K8S_SAFE}]{{1,10}}")
_K8S_POD = re.compile(f"[{_K8S_SAFE}]{{5}}")

_WORKSPACE_PLACEHOLDER = "{workspace}"


@lru_cache(maxsize=64)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@dataclass(frozen=True)
class IdentityConfig:
    """Naming rules. Patterns are full-matched; division and id are single ``-``-free tokens.

    ``[0-9]`` rather than ``\\d`` on purpose: ``\\d`` also matches non-ASCII digits.
    """

    assignment_pattern: str = r"hw[0-9]+"
    # Strings, not ints: leading zeros are part of an id.
    student_id_pattern: str = r"[0-9]+"
    division_pattern: str = r"[0-9]+"
    # Unicode word characters (Korean included) in "-"-separated, non-empty tokens.
    subject_pattern: str = r"\w+(?:-\w+)*"
    hostname_prefix: str = "jcode-"
    # Where a student container sees the workspace; "{workspace}" stands for the workspace
    # directory name and must be the last component.
    container_roots: tuple[str, ...] = ("/home/coder/project", "/workspace/{workspace}")

    def __post_init__(self) -> None:
        # Bad config should fail at startup, loudly, not turn every path into NotStudent.
        for name in ("assignment", "student_id", "division", "subject"):
            pattern = getattr(self, f"{name}_pattern")
            try:
                _compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"{name} pattern {pattern!r} is not a valid regular expression: {exc}"
                ) from exc
        if not self.container_roots:
            raise ValueError("at least one container root is required")
        for root in self.container_roots:
            parts = root.split("/")
            if not root.startswith("/"):
                raise ValueError(f"container root {root!r} must be an absolute path")
            if any(_WORKSPACE_PLACEHOLDER in p for p in parts[:-1]) or (
                _WORKSPACE_PLACEHOLDER in parts[-1] and parts[-1] != _WORKSPACE_PLACEHOLDER
            ):
                raise ValueError(
                    f"container root {root!r}: {_WORKSPACE_PLACEHOLDER} may only be the "
                    "whole last path component"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> IdentityConfig:
        """Read ``WATCHER_*`` overrides; unset or blank variables keep the default.

        ``WATCHER_ASSIGNMENT_PATTERN``, ``WATCHER_STUDENT_ID_PATTERN``,
        ``WATCHER_DIVISION_PATTERN``, ``WATCHER_SUBJECT_PATTERN``, ``WATCHER_HOSTNAME_PREFIX``
        and ``WATCHER_CONTAINER_ROOTS`` (``:``- or ``,``-separated). Raises ValueError on an
        invalid regex or root.
        """
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        for field, var in (
            ("assignment_pattern", "WATCHER_ASSIGNMENT_PATTERN"),
            ("student_id_pattern", "WATCHER_STUDENT_ID_PATTERN"),
            ("division_pattern", "WATCHER_DIVISION_PATTERN"),
            ("subject_pattern", "WATCHER_SUBJECT_PATTERN"),
            ("hostname_prefix", "WATCHER_HOSTNAME_PREFIX"),
        ):
            value = env.get(var, "").strip()
            if not value:
                continue
            if field.endswith("_pattern"):
                try:
                    _compile(value)
                except re.error as exc:
                    raise ValueError(
                        f"{var}={value!r} is not a valid regular expression: {exc}"
                    ) from exc
            kwargs[field] = value
        roots = env.get("WATCHER_CONTAINER_ROOTS", "").strip()
        if roots:
            kwargs["container_roots"] = tuple(
                r.strip() for r in re.split(r"[:,]", roots) if r.strip()
            )
        try:
            return replace(cls(), **kwargs)
        except ValueError as exc:
            raise ValueError(f"WATCHER_CONTAINER_ROOTS: {exc}") from exc


DEFAULT = IdentityConfig()


@dataclass(frozen=True)
class Workspace:
    subject: str
    division: str
    student_id: str

    @property
    def class_div(self) -> str:
        return f"{self.subject}-{self.division}"

    @property
    def dir_name(self) -> str:
        return f"{self.subject}-{self.division}-{self.student_id}"


@dataclass(frozen=True)
class StudentPath:
    workspace: Workspace
    assignment: str
    path: str  # "/"-joined below the assignment directory; "" is the directory itself


@dataclass(frozen=True)
class ContainerPath:
    assignment: str
    path: str  # as in StudentPath
    # Set when the root names the workspace (``/workspace/<ws>/...``), so callers can
    # compare it with the hostname's.
    workspace_from_path: Workspace | None
    # True when a ``workspace`` was passed and the path names a different one.
    workspace_mismatch: bool = False


@dataclass(frozen=True)
class NotStudent:
    reason: str


def _full(pattern: str, text: str) -> bool:
    return _compile(pattern).fullmatch(text) is not None


def parse_workspace_dir(name: str, cfg: IdentityConfig = DEFAULT) -> Workspace | NotStudent:
    """``<subject>-<division>-<studentId>``, split from the right (subjects may hold ``-``)."""
    shape = "<subject>-<division>-<studentId>"
    if "/" in name or "\x00" in name:
        return NotStudent(f"not a workspace directory name: {name!r} contains '/' or NUL")
    parts = name.rsplit("-", 2)
    if len(parts) != 3:
        return NotStudent(f"not a student path: {name!r} does not look like {shape}")
    subject, division, student_id = parts
    if not division or not _full(cfg.division_pattern, division):
        return NotStudent(
            f"not a student path: division {division!r} in {shape} does not match "
            f"{cfg.division_pattern!r}"
        )
    if not student_id or not _full(cfg.student_id_pattern, student_id):
        return NotStudent(
            f"not a student path: the last token of {shape} is not a student id matching "
            f"{cfg.student_id_pattern!r}"
        )
    if not subject or not _full(cfg.subject_pattern, subject):
        return NotStudent(
            f"not a student path: subject {subject!r} in {shape} does not match "
            f"{cfg.subject_pattern!r}"
        )
    if len(subject) + 1 + len(division) > _CLASS_DIV_MAX or len(student_id) > _STUDENT_ID_MAX:
        return NotStudent("not a student path: subject, division or student id is too long")
    return Workspace(subject, division, student_id)


def relative_to_root(abs_path: str, root: str) -> str | None:
    """``abs_path`` relative to ``root`` ("" for the root itself), None if not below it.

    Lexical only (no symlinks); ``..`` cannot climb out of ``root``.
    """
    root_n = posixpath.normpath(root)
    path_n = posixpath.normpath(abs_path)
    if path_n == root_n:
        return ""
    prefix = root_n if root_n.endswith("/") else root_n + "/"
    return path_n[len(prefix) :] if path_n.startswith(prefix) else None


def _split_assignment(parts: list[str], cfg: IdentityConfig) -> tuple[str, str] | NotStudent:
    """``[<hw>, <path>...]`` → (assignment, "/"-joined path)."""
    if not parts:
        return NotStudent(
            "not a student file: it is the workspace directory itself, not inside an "
            "assignment directory"
        )
    assignment = parts[0]
    if len(assignment) > _ASSIGNMENT_MAX or not _full(cfg.assignment_pattern, assignment):
        where = "a file directly in the workspace" if len(parts) == 1 else "a directory"
        return NotStudent(
            f"not a student file: {assignment!r} ({where}) is not an assignment directory "
            f"matching {cfg.assignment_pattern!r}"
        )
    return assignment, "/".join(parts[1:])


def _normalise_rel(rel: str) -> list[str] | NotStudent:
    """Relative path → its components after lexical normalisation; refuses escapes."""
    if "\x00" in rel:
        return NotStudent("not a student path: it contains a NUL character")
    if rel.startswith("/"):
        return NotStudent(
            "not a student path: expected a path relative to the watch root "
            "(use relative_to_root for absolute paths)"
        )
    norm = posixpath.normpath(rel)
    if norm == ".":
        return []
    if norm == ".." or norm.startswith("../"):
        return NotStudent("not a student path: it leads outside the watch root")
    return norm.split("/")


def parse_workspace_path(rel: str, cfg: IdentityConfig = DEFAULT) -> StudentPath | NotStudent:
    """``<workspace>/<hw>/<path...>`` relative to the watch root (``./`` prefix allowed)."""
    parts = _normalise_rel(rel)
    if isinstance(parts, NotStudent):
        return parts
    if not parts:
        return NotStudent("not a student path: it is the watch root itself")
    workspace = parse_workspace_dir(parts[0], cfg)
    if isinstance(workspace, NotStudent):
        return workspace
    split = _split_assignment(parts[1:], cfg)
    if isinstance(split, NotStudent):
        return split
    return StudentPath(workspace, split[0], split[1])


def parse_hostname(hostname: str, cfg: IdentityConfig = DEFAULT) -> Workspace | NotStudent:
    """``<prefix><subject>-<division>-<studentId>[-<replicaset>-<pod>]`` → the workspace.

    Disambiguation rule (a replicaset hash may be all digits, subjects may contain ``-``):

    1. If the last two ``-`` tokens look like a pod suffix (lowercase ``[a-z0-9]+`` each)
       and what remains parses as a workspace (division and id matching their patterns),
       that reading wins. Every Deployment pod has such a suffix, so this is the
       production-correct reading even for an all-digit replicaset hash.
    2. Otherwise the whole remainder must parse as a workspace (no suffix: test or bare
       containers).

    So a suffix-less hostname whose *subject* itself looks like ``<x>-<digits>-<digits>``
    (``jcode-a-1-2-3-4``) is read as workspace ``a-1-2`` with pod suffix ``3-4``; real
    subjects do not look like that.

    Truncation: a hostname of 62+ characters may have been cut to Kubernetes' 63-character
    limit (generated pod names cut the base and glue the random suffix on; the kubelet cuts
    long names and trims a trailing ``-``), which can silently shorten the student id. For
    such hostnames only rule 1 applies, and only when the suffix has the exact shape
    Kubernetes generates (replicaset hash of 1-10 and pod suffix of 5 characters from its
    safe alphabet, which has no ``0``, ``1`` or ``3`` so a cut-off student id rarely passes
    for a hash). Anything else is NotStudent: better unattributed than misattributed; the
    workspace path is the fallback identity.
    """
    prefix = cfg.hostname_prefix
    if not hostname.startswith(prefix):
        return NotStudent(f"not a student container: hostname does not start with {prefix!r}")
    rest = hostname[len(prefix) :]
    maybe_truncated = len(hostname) >= _MAYBE_TRUNCATED
    rs_re, pod_re = (_K8S_RS_HASH, _K8S_POD) if maybe_truncated else (_SUFFIX_TOKEN,) * 2
    parts = rest.rsplit("-", 2)
    if len(parts) == 3 and rs_re.fullmatch(parts[1]) and pod_re.fullmatch(parts[2]):
        with_suffix = parse_workspace_dir(parts[0], cfg)
        if isinstance(with_suffix, Workspace):
            return with_suffix
    if maybe_truncated:
        return NotStudent(
            f"not a student container: hostname is {len(hostname)} characters (Kubernetes "
            f"cuts hostnames at {_HOSTNAME_MAX}) and has no intact -<replicaset>-<pod> "
            "suffix; it may be truncated, so it is not trusted"
        )
    whole = parse_workspace_dir(rest, cfg)
    if isinstance(whole, Workspace):
        return whole
    return NotStudent(
        f"not a student container: hostname is not {prefix}<subject>-<division>-<studentId>"
        f"[-<replicaset>-<pod>] ({whole.reason})"
    )


def parse_container_path(
    path: str, cfg: IdentityConfig = DEFAULT, workspace: Workspace | None = None
) -> ContainerPath | NotStudent:
    """An absolute path inside a student container → assignment and path below it.

    Roots are tried in ``cfg.container_roots`` order. ``workspace`` is the identity known
    from the hostname, if any; a path naming another workspace still parses but is flagged
    ``workspace_mismatch`` (the caller decides what to trust).
    """
    if "\x00" in path:
        return NotStudent("not a student path: it contains a NUL character")
    if not path.startswith("/"):
        return NotStudent("not a student path: container paths must be absolute")
    for root in cfg.container_roots:
        templated = root.endswith("/" + _WORKSPACE_PLACEHOLDER)
        base = root[: -len(_WORKSPACE_PLACEHOLDER) - 1] if templated else root
        rel = relative_to_root(path, base or "/")
        if rel is None:
            continue
        parts = rel.split("/") if rel else []
        from_path: Workspace | None = None
        if templated:
            if not parts:
                return NotStudent(f"not a student path: it is {base or '/'} itself")
            ws = parse_workspace_dir(parts[0], cfg)
            if isinstance(ws, NotStudent):
                return ws
            from_path, parts = ws, parts[1:]
        split = _split_assignment(parts, cfg)
        if isinstance(split, NotStudent):
            return split
        mismatch = workspace is not None and from_path is not None and from_path != workspace
        return ContainerPath(split[0], split[1], from_path, mismatch)
    return NotStudent("not a student path: not below any configured container root")


def encode_compat_filename(path: str) -> str:
    """The old API's ``filename``: the path below the assignment with ``/`` → ``@``."""
    return path.replace("/", "@")


def _valid_rel(path: str) -> bool:
    return "\x00" not in path and all(p not in ("", ".", "..") for p in path.split("/"))


def compat_filename_candidates(name: str) -> list[str]:
    """Paths an old-API ``filename`` may denote, most likely first.

    The encoding is lossy (``@`` meant ``/``, but real names contain ``@`` too), so: the
    literal name first (a top-level ``test@file#1.cpp``), then every ``@`` read as ``/``.
    Candidates that are not valid relative paths are left out.
    """
    candidates = [name]
    if "@" in name:
        candidates.append(name.replace("@", "/"))
    return [c for c in candidates if _valid_rel(c)]
