"""Identity parsing: explicit cases from the design plus hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from watcher_common.identity import (
    DEFAULT,
    ContainerPath,
    IdentityConfig,
    NotStudent,
    StudentPath,
    Workspace,
    compat_filename_candidates,
    encode_compat_filename,
    parse_container_path,
    parse_hostname,
    parse_workspace_dir,
    parse_workspace_path,
    relative_to_root,
)

OS1 = Workspace("os", "1", "202012345")

# ---------------------------------------------------------------- workspace directory


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("os-1-202012345", OS1),
        ("data-structure-1-202012345", Workspace("data-structure", "1", "202012345")),
        ("한글-1-202012345", Workspace("한글", "1", "202012345")),
        ("test2502-1-202012180", Workspace("test2502", "1", "202012180")),
        ("os-01-000123", Workspace("os", "01", "000123")),  # leading zeros survive
    ],
)
def test_workspace_dir_parses(name: str, expected: Workspace) -> None:
    assert parse_workspace_dir(name) == expected


def test_class_div_and_dir_name() -> None:
    ws = parse_workspace_dir("data-structure-2-202012345")
    assert isinstance(ws, Workspace)
    assert ws.class_div == "data-structure-2"
    assert ws.dir_name == "data-structure-2-202012345"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "foo",
        "os-1",
        "-1-202012345",  # empty subject
        "os--1-202012345",  # empty subject token
        "os-x-202012345",  # division not digits
        "os-1-20201234x",  # id not digits
        "os-1-",
        "os-1-202012345/hw1",
        "my os-1-202012345",  # whitespace in subject
        "os-١-202012345",  # non-ASCII digit is not a division
        "a" * 200 + "-1-2",  # class_div longer than the wire allows
        "os-1-" + "1" * 65,  # student id longer than the wire allows
    ],
)
def test_workspace_dir_rejects(name: str) -> None:
    result = parse_workspace_dir(name)
    assert isinstance(result, NotStudent)
    assert result.reason


def test_not_student_reason_is_readable() -> None:
    result = parse_workspace_dir("foo")
    assert result == NotStudent(
        "not a student path: 'foo' does not look like <subject>-<division>-<studentId>"
    )


def test_reason_does_not_quote_a_parsed_student_id() -> None:
    result = parse_workspace_path("os-1-202012345/notes.txt")
    assert isinstance(result, NotStudent)
    assert "202012345" not in result.reason


# ---------------------------------------------------------------- paths below WATCH_ROOT


@pytest.mark.parametrize(
    ("rel", "assignment", "path"),
    [
        ("os-1-202012345/hw1/test.c", "hw1", "test.c"),
        ("os-1-202012345/hw21/a.c", "hw21", "a.c"),  # full match, not prefix "hw2"
        ("os-1-202012345/hw1", "hw1", ""),
        ("os-1-202012345/hw1/", "hw1", ""),
        ("./os-1-202012345/hw1/src/main.c", "hw1", "src/main.c"),
        ("os-1-202012345/hw1/./src//x/../main.c", "hw1", "src/main.c"),
        ("os-1-202012345/hw1/my file?.c", "hw1", "my file?.c"),
        ("os-1-202012345/hw1/...", "hw1", "..."),
        ("os-1-202012345/hw1/line\nbreak.c", "hw1", "line\nbreak.c"),
    ],
)
def test_workspace_path(rel: str, assignment: str, path: str) -> None:
    assert parse_workspace_path(rel) == StudentPath(OS1, assignment, path)


def test_workspace_path_odd_names_byte_exact() -> None:
    assert parse_workspace_path("한글-1-202012345/hw1/테스트.py") == StudentPath(
        Workspace("한글", "1", "202012345"), "hw1", "테스트.py"
    )
    assert parse_workspace_path("cpp-1-202012345/hw1/test@file#1.cpp") == StudentPath(
        Workspace("cpp", "1", "202012345"), "hw1", "test@file#1.cpp"
    )


@pytest.mark.parametrize(
    "rel",
    [
        "",
        ".",
        "os-1-202012345",  # the workspace itself
        "os-1-202012345/notes.txt",  # directly in the workspace
        "os-1-202012345/lab1/a.c",  # not an assignment dir
        "os-1-202012345/hw/a.c",
        "os-1-202012345/hw1x/a.c",
        "os-1-202012345/HW1/a.c",
        "/os-1-202012345/hw1/a.c",  # absolute: use relative_to_root
        "../os-1-202012345/hw1/a.c",
        "os-1-202012345/../../etc/passwd",
        "os-1-202012345/hw1/a\x00.c",
        "lost+found/hw1/a.c",
    ],
)
def test_workspace_path_rejects(rel: str) -> None:
    result = parse_workspace_path(rel)
    assert isinstance(result, NotStudent)
    assert result.reason.startswith("not a student")


def test_workspace_path_reasons_say_why() -> None:
    direct = parse_workspace_path("os-1-202012345/notes.txt")
    assert isinstance(direct, NotStudent)
    assert "directly in the workspace" in direct.reason
    other = parse_workspace_path("os-1-202012345/lab1/a.c")
    assert isinstance(other, NotStudent)
    assert "'lab1'" in other.reason and "hw[0-9]+" in other.reason


def test_custom_assignment_pattern() -> None:
    cfg = IdentityConfig(assignment_pattern=r"hw[0-9]+|lab[0-9]+")
    assert parse_workspace_path("os-1-202012345/lab3/a.c", cfg) == StudentPath(OS1, "lab3", "a.c")
    assert isinstance(parse_workspace_path("os-1-202012345/lab3x/a.c", cfg), NotStudent)


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/watch/os-1-202012345/hw1/a.c", "/watch", "os-1-202012345/hw1/a.c"),
        ("/watch/os-1-202012345/hw1/a.c", "/watch/", "os-1-202012345/hw1/a.c"),
        ("/watch", "/watch", ""),
        ("/watch/", "/watch", ""),
        ("/watchers/x", "/watch", None),
        ("/watch/../etc/passwd", "/watch", None),
        ("/etc/passwd", "/watch", None),
        ("/a/b", "/", "a/b"),
    ],
)
def test_relative_to_root(path: str, root: str, expected: str | None) -> None:
    assert relative_to_root(path, root) == expected


def test_relative_to_root_then_parse() -> None:
    rel = relative_to_root("/watch/os-1-202012345/hw1/test.c", "/watch")
    assert rel is not None
    assert parse_workspace_path(rel) == StudentPath(OS1, "hw1", "test.c")


# ---------------------------------------------------------------- hostnames


@pytest.mark.parametrize(
    ("hostname", "class_div", "student_id"),
    [
        ("jcode-os-1-202012345-866cbc896c-lrx9d", "os-1", "202012345"),
        ("jcode-test2502-1-202012180-68d58d5b57-bp47r", "test2502-1", "202012180"),
        ("jcode-data-structure-1-202012345-5d9f8c7b6d-abcde", "data-structure-1", "202012345"),
        ("jcode-os-1-202012345", "os-1", "202012345"),
        ("jcode-data-structure-1-202012345", "data-structure-1", "202012345"),
        ("jcode-os-1-202012345-abc12-xyz9", "os-1", "202012345"),  # test containers
        ("jcode-os-1-202012345-24567892-bp47r", "os-1", "202012345"),  # all-digit rs hash
        ("jcode-os-1-202012345-24567892-24567", "os-1", "202012345"),  # all-digit both
    ],
)
def test_hostname(hostname: str, class_div: str, student_id: str) -> None:
    ws = parse_hostname(hostname)
    assert isinstance(ws, Workspace), ws
    assert (ws.class_div, ws.student_id) == (class_div, student_id)


@pytest.mark.parametrize(
    "hostname",
    [
        "",
        "jcode-",
        "jcode",
        "os-1-202012345",  # no prefix
        "watcher-node-abc12",
        "jcode-os-1-202012345-foo",  # one stray token
        "jcode-os-1-202012345-ABC12-xyz9",  # not a k8s-style suffix
        "jcode-os-1-202012345.cluster.local",
    ],
)
def test_hostname_rejects(hostname: str) -> None:
    assert isinstance(parse_hostname(hostname), NotStudent)


def test_hostname_ambiguity_prefers_suffix() -> None:
    # Documented rule: a trailing "-<alnum>-<alnum>" is a pod suffix when the rest parses.
    assert parse_hostname("jcode-a-1-2-3-4") == Workspace("a", "1", "2")


def test_hostname_custom_prefix() -> None:
    cfg = IdentityConfig(hostname_prefix="ide-")
    assert parse_hostname("ide-os-1-202012345-866cbc896c-lrx9d", cfg) == OS1
    assert isinstance(parse_hostname("jcode-os-1-202012345", cfg), NotStudent)


def test_hostname_at_limit_with_intact_suffix_parses() -> None:
    subject = "programming-languages-and-compilers"
    hostname = f"jcode-{subject}-1-202012345-5d9f8c7b6d-lrx9d"
    assert len(hostname) >= 62
    assert parse_hostname(hostname) == Workspace(subject, "1", "202012345")


@pytest.mark.parametrize(
    "hostname",
    [
        # generated name: base cut at 58 chars, random suffix glued on
        ("jcode-programming-languages-and-compilers-1-202012345-5d9f" + "lrx9d"),
        # cut right after the student id's dash
        ("jcode-programming-languages-and-compilers-abc-1-202012345-" + "lrx9d"),
        # kubelet cut a long bare name inside the student id
        ("jcode-programming-languages-and-compilers-and-more-1-202012345678")[:63],
    ],
)
def test_hostname_possibly_truncated_is_not_trusted(hostname: str) -> None:
    assert len(hostname) >= 62
    result = parse_hostname(hostname)
    assert isinstance(result, NotStudent)
    assert "truncated" in result.reason


# ---------------------------------------------------------------- container paths


@pytest.mark.parametrize(
    ("path", "assignment", "rel", "from_path"),
    [
        ("/home/coder/project/hw2/sub", "hw2", "sub", None),
        ("/home/coder/project/hw2", "hw2", "", None),
        ("/home/coder/project/hw2/", "hw2", "", None),
        ("/home/coder/project/hw2/./a/../b.c", "hw2", "b.c", None),
        ("/home/coder/project/hw1/my file?.c", "hw1", "my file?.c", None),
        ("/workspace/os-1-202012345/hw1/a.c", "hw1", "a.c", OS1),
        ("/workspace/os-1-202012345/hw1", "hw1", "", OS1),
    ],
)
def test_container_path(path: str, assignment: str, rel: str, from_path: Workspace | None) -> None:
    assert parse_container_path(path) == ContainerPath(assignment, rel, from_path)


@pytest.mark.parametrize(
    "path",
    [
        "/home/coder/project",
        "/home/coder/project/notes.txt",
        "/home/coder/project/hw2x/a.c",
        "/home/coder/project/../../../etc/passwd",
        "/home/coder/project/hw1/../../x",  # normalises outside the root
        "/home/coder/projectx/hw1/a.c",
        "/workspace",
        "/workspace/hw1/a.c",
        "/workspace/os-1-202012345",
        "/workspace/os-1-202012345/a.c",
        "/tmp/hw1/a.c",
        "hw1/a.c",
        "",
        "/home/coder/project/hw1/\x00",
    ],
)
def test_container_path_rejects(path: str) -> None:
    assert isinstance(parse_container_path(path), NotStudent)


def test_container_path_workspace_mismatch() -> None:
    other = Workspace("os", "1", "202099999")
    mismatched = parse_container_path("/workspace/os-1-202012345/hw1/a.c", workspace=other)
    assert isinstance(mismatched, ContainerPath)
    assert mismatched.workspace_from_path == OS1 and mismatched.workspace_mismatch
    matched = parse_container_path("/workspace/os-1-202012345/hw1/a.c", workspace=OS1)
    assert isinstance(matched, ContainerPath) and not matched.workspace_mismatch
    home = parse_container_path("/home/coder/project/hw1/a.c", workspace=other)
    assert isinstance(home, ContainerPath) and not home.workspace_mismatch


def test_container_roots_configurable() -> None:
    cfg = IdentityConfig(container_roots=("/srv/{workspace}", "/code"))
    assert parse_container_path("/code/hw3/x.py", cfg) == ContainerPath("hw3", "x.py", None)
    assert parse_container_path("/srv/os-1-202012345/hw3", cfg) == ContainerPath("hw3", "", OS1)
    assert isinstance(parse_container_path("/home/coder/project/hw3/x.py", cfg), NotStudent)


# ---------------------------------------------------------------- configuration


def test_from_env_defaults() -> None:
    assert IdentityConfig.from_env({}) == DEFAULT
    assert IdentityConfig.from_env({"WATCHER_ASSIGNMENT_PATTERN": "  "}) == DEFAULT


def test_from_env_overrides() -> None:
    cfg = IdentityConfig.from_env(
        {
            "WATCHER_ASSIGNMENT_PATTERN": r"(hw|lab)[0-9]+",
            "WATCHER_STUDENT_ID_PATTERN": r"[0-9]{9}",
            "WATCHER_HOSTNAME_PREFIX": "ide-",
            "WATCHER_CONTAINER_ROOTS": "/a:/b/{workspace}, /c",
        }
    )
    assert cfg.assignment_pattern == r"(hw|lab)[0-9]+"
    assert cfg.student_id_pattern == r"[0-9]{9}"
    assert cfg.hostname_prefix == "ide-"
    assert cfg.container_roots == ("/a", "/b/{workspace}", "/c")
    assert isinstance(parse_workspace_dir("os-1-1234", cfg), NotStudent)
    assert parse_workspace_path("os-1-202012345/lab2/a", cfg) == StudentPath(OS1, "lab2", "a")


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHER_HOSTNAME_PREFIX", "x-")
    assert IdentityConfig.from_env().hostname_prefix == "x-"


@pytest.mark.parametrize(
    "var", ["WATCHER_ASSIGNMENT_PATTERN", "WATCHER_STUDENT_ID_PATTERN", "WATCHER_DIVISION_PATTERN"]
)
def test_from_env_invalid_regex(var: str) -> None:
    with pytest.raises(ValueError, match=var):
        IdentityConfig.from_env({var: "hw(["})


@pytest.mark.parametrize("roots", ["relative/path", "/a/{workspace}/b", "/a/x{workspace}", ":,"])
def test_invalid_container_roots(roots: str) -> None:
    with pytest.raises(ValueError, match="WATCHER_CONTAINER_ROOTS"):
        IdentityConfig.from_env({"WATCHER_CONTAINER_ROOTS": roots})


def test_invalid_regex_in_constructor() -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        IdentityConfig(assignment_pattern="(")


# ---------------------------------------------------------------- compat filenames


def test_compat_filename() -> None:
    assert encode_compat_filename("src/main.c") == "src@main.c"
    assert compat_filename_candidates("src@main.c") == ["src@main.c", "src/main.c"]
    assert compat_filename_candidates("test@file#1.cpp")[0] == "test@file#1.cpp"
    assert compat_filename_candidates("main.c") == ["main.c"]
    assert compat_filename_candidates("a@@b") == ["a@@b"]  # "a//b" is not a path
    assert compat_filename_candidates("@x") == ["@x"]
    assert compat_filename_candidates("") == []


# ---------------------------------------------------------------- properties

_ASCII_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_DIGITS = "0123456789"
_K8S_SAFE = "bcdfghjklmnpqrstvwxz2456789"

_word_char = st.one_of(
    st.sampled_from(_ASCII_ALNUM), st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3)
)
_subjects = st.lists(st.text(_word_char, min_size=1, max_size=8), min_size=1, max_size=4).map(
    "-".join
)
_divisions = st.text(_DIGITS, min_size=1, max_size=3)
_ids = st.text(_DIGITS, min_size=1, max_size=12)
# Text that tends to reach the deeper branches, plus fully arbitrary text.
_pathish = st.text(st.sampled_from("-/.@ hwjcode0123456789a한#?\x00\n"), max_size=60)
_anything = st.one_of(st.text(), _pathish)
# Lone surrogates are what os.fsdecode makes of non-UTF-8 file names.
_with_surrogates = st.text(
    st.one_of(
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
        st.sampled_from("-/hw1jcode0123456789"),
    )
)


@given(st.one_of(_anything, _with_surrogates))
def test_parsers_never_raise(text: str) -> None:
    for result in (
        parse_workspace_dir(text),
        parse_workspace_path(text),
        parse_hostname(text),
        parse_hostname("jcode-" + text),
        parse_container_path(text),
        parse_container_path("/home/coder/project/" + text),
        parse_container_path("/workspace/" + text, workspace=OS1),
    ):
        assert isinstance(result, Workspace | StudentPath | ContainerPath | NotStudent)
        if isinstance(result, NotStudent):
            assert result.reason
    compat_filename_candidates(text)
    relative_to_root(text, "/watch")


@given(_subjects, _divisions, _ids)
def test_workspace_dir_round_trip(subject: str, division: str, student_id: str) -> None:
    assert parse_workspace_dir(f"{subject}-{division}-{student_id}") == Workspace(
        subject, division, student_id
    )


@given(_subjects, _divisions, _ids, st.lists(st.text(_word_char, min_size=1), max_size=3))
def test_workspace_path_round_trip(
    subject: str, division: str, student_id: str, below: list[str]
) -> None:
    rel = "/".join([f"{subject}-{division}-{student_id}", "hw7", *below])
    assert parse_workspace_path(rel) == StudentPath(
        Workspace(subject, division, student_id), "hw7", "/".join(below)
    )


_dns_subjects = st.lists(
    st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789"), min_size=1, max_size=10),
    min_size=1,
    max_size=4,
).map("-".join)
_rs_hashes = st.text(st.sampled_from(_K8S_SAFE), min_size=8, max_size=10)
_pod_suffixes = st.text(st.sampled_from(_K8S_SAFE), min_size=5, max_size=5)


@given(_dns_subjects, _divisions, _ids, _rs_hashes, _pod_suffixes)
def test_hostname_round_trip_k8s_suffix(
    subject: str, division: str, student_id: str, rs: str, pod: str
) -> None:
    # Holds at any length: an intact k8s-shaped suffix is trusted even near the limit.
    hostname = f"jcode-{subject}-{division}-{student_id}-{rs}-{pod}"
    assert parse_hostname(hostname) == Workspace(subject, division, student_id)


_test_tokens = st.text(st.sampled_from("abcxyz0123456789"), min_size=1, max_size=6)


@given(_dns_subjects, _divisions, _ids, _test_tokens, _test_tokens)
def test_hostname_round_trip_test_suffix(
    subject: str, division: str, student_id: str, rs: str, pod: str
) -> None:
    hostname = f"jcode-{subject}-{division}-{student_id}-{rs}-{pod}"
    assume(len(hostname) < 62)  # near the limit only k8s-shaped suffixes are trusted
    assert parse_hostname(hostname) == Workspace(subject, division, student_id)


@given(_dns_subjects, _divisions, _ids)
def test_hostname_round_trip_no_suffix(subject: str, division: str, student_id: str) -> None:
    hostname = f"jcode-{subject}-{division}-{student_id}"
    assume(len(hostname) < 62)
    # The documented ambiguity: a subject that itself parses as a workspace makes the
    # division and id look like a pod suffix.
    assume(isinstance(parse_workspace_dir(subject), NotStudent))
    assert parse_hostname(hostname) == Workspace(subject, division, student_id)


_letter_first_tokens = st.builds(
    str.__add__,
    st.sampled_from("abcdefghijklmnopqrstuvwxyz"),
    st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789"), max_size=12),
)
_real_ids = st.text(_DIGITS, min_size=7, max_size=7).map(lambda s: "20" + s)


@given(
    st.lists(_letter_first_tokens, min_size=1, max_size=6).map("-".join),
    st.text(_DIGITS, min_size=1, max_size=2),
    _real_ids,
    _rs_hashes,
    _pod_suffixes,
)
def test_hostname_truncated_never_misattributed(
    subject: str, division: str, student_id: str, rs: str, pod: str
) -> None:
    expected = Workspace(subject, division, student_id)
    # Kubernetes' generated names: base cut to 58 characters, 5 random characters appended.
    base = f"jcode-{subject}-{division}-{student_id}-{rs}-"
    generated = base[:58] + pod
    result = parse_hostname(generated)
    assert result == expected or (len(base) > 58 and isinstance(result, NotStudent))
    # The kubelet's cut of a long bare (suffix-less) pod name.
    bare = f"jcode-{subject}-{division}-{student_id}"
    cut = bare[:63].rstrip("-.")
    result = parse_hostname(cut)
    assert result == expected or isinstance(result, NotStudent)
    if len(bare) < 62:
        assert result == expected


_components = st.text(
    st.characters(exclude_characters="/@\x00", exclude_categories=["Cs"]), min_size=1
).filter(lambda c: c not in (".", ".."))
_paths = st.lists(_components, min_size=1, max_size=4).map("/".join)


@given(_paths)
def test_compat_encoding_without_at(path: str) -> None:
    candidates = compat_filename_candidates(encode_compat_filename(path))
    # Without "@" in the path, decoding every "@" gives it back: it is the last candidate,
    # and the only one when it is a top-level name.
    assert candidates[-1] == path
    if "/" not in path:
        assert candidates == [path]


@given(st.lists(_components, min_size=2, max_size=4).map("@".join))
def test_compat_top_level_name_with_at_comes_first(name: str) -> None:
    assert "/" not in name
    assert compat_filename_candidates(encode_compat_filename(name))[0] == name
