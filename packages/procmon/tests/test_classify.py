"""Table-driven tests of exec classification (tool, kind, sources, output, module)."""

from __future__ import annotations

import pytest

from watcher_procmon.classify import Classification, classify, tool_name


@pytest.mark.parametrize(
    ("path", "tool"),
    [
        ("/usr/bin/gcc", "gcc"),
        ("/usr/bin/x86_64-linux-gnu-gcc-12", "gcc"),
        ("/usr/bin/aarch64-linux-gnu-g++-13", "g++"),
        ("/opt/cross/bin/x86_64-pc-linux-gnu-gcc-13.2.0", "gcc"),
        ("/usr/bin/arm-none-eabi-gcc", "gcc"),
        ("/usr/bin/x86_64-w64-mingw32-g++", "g++"),
        ("/usr/local/bin/gcc-14", "gcc"),
        ("/usr/bin/cc", "cc"),
        ("/usr/bin/c++", "c++"),
        ("/usr/lib/llvm-14/bin/clang", "clang"),
        ("/usr/bin/clang-14", "clang"),
        ("/usr/bin/clang++-17", "clang++"),
        ("/usr/lib/jvm/java-17-openjdk-amd64/bin/javac", "javac"),
        ("/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "java"),
        ("/usr/bin/python3", "python"),
        ("/usr/bin/python3.11", "python"),
        ("/root/.pyenv/versions/3.12.4/bin/python3.12", "python"),
        ("/opt/conda/bin/python", "python"),
        ("/usr/bin/node", "node"),
        ("/usr/bin/nodejs", "node"),
        ("/usr/bin/make", "make"),
        ("/usr/bin/gmake", "make"),
        ("/usr/bin/cmake", "cmake"),
        ("/usr/lib/gcc/x86_64-linux-gnu/12/cc1", None),
        ("/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus", None),
        ("/usr/bin/gcc-ar-12", None),
        ("/usr/bin/python3.11-config", None),
        ("/usr/bin/c++filt", None),
        ("/usr/bin/ls", None),
    ],
)
def test_tool_name(path: str, tool: str | None) -> None:
    assert tool_name(path) == tool


GCC = "/usr/bin/x86_64-linux-gnu-gcc-12"
GXX = "/usr/bin/x86_64-linux-gnu-g++-12"
PY = "/usr/bin/python3.11"
JAVA = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"
CC1 = "/usr/lib/gcc/x86_64-linux-gnu/12/cc1"
C = Classification

CASES: list[tuple[str, list[str], Classification]] = [
    (GCC, ["gcc", "hello.c"], C("compiler", "gcc", ("hello.c",))),
    (
        GCC,
        ["gcc", "-Wall", "-I", "inc", "-o", "app", "main.c", "util.c", "-lm"],
        C("compiler", "gcc", ("main.c", "util.c"), output="app"),
    ),
    (GCC, ["cc", "-c", "-oobj.o", "a.c"], C("compiler", "gcc", ("a.c",), output="obj.o")),
    (GCC, ["gcc", "-D", "X=1.c", "real.c"], C("compiler", "gcc", ("real.c",))),
    (
        GXX,
        ["g++", "-std=c++17", "main.cpp", "list.cc", "node.hpp", "x.o", "-o", "a.out"],
        C("compiler", "g++", ("main.cpp", "list.cc", "node.hpp"), output="a.out"),
    ),
    ("/usr/bin/clang-14", ["clang", "-x", "c", "p.c"], C("compiler", "clang", ("p.c",))),
    (
        "/usr/lib/jvm/java-17-openjdk-amd64/bin/javac",
        ["javac", "-d", "out", "-cp", "lib.jar", "Main.java", "src/Util.java"],
        C("compiler", "javac", ("Main.java", "src/Util.java"), output="out"),
    ),
    (PY, ["python3", "hw1.py", "arg.py"], C("interpreter", "python", ("hw1.py",))),
    (PY, ["python3", "-u", "-X", "dev", "run.py"], C("interpreter", "python", ("run.py",))),
    (PY, ["python3", "-m", "pytest", "-q"], C("interpreter", "python", module="pytest")),
    (PY, ["python3", "-mvenv", "env"], C("interpreter", "python", module="venv")),
    (PY, ["python3", "-c", "print(1)"], C("interpreter", "python", inline_code=True)),
    (PY, ["python3"], C("interpreter", "python")),
    (JAVA, ["java", "-cp", ".", "Main"], C("interpreter", "java", module="Main")),
    (JAVA, ["java", "Main.java"], C("interpreter", "java", ("Main.java",))),
    (JAVA, ["java", "-jar", "app.jar"], C("interpreter", "java", ("app.jar",))),
    ("/usr/bin/node", ["node", "-r", "x", "app.js"], C("interpreter", "node", ("app.js",))),
    ("/usr/bin/node", ["node", "-e", "1+1"], C("interpreter", "node", inline_code=True)),
    ("/usr/bin/make", ["make", "-j4"], C("buildtool", "make")),
    ("/usr/bin/cmake", ["cmake", "--build", "."], C("buildtool", "cmake")),
    (CC1, [CC1, "-quiet", "a.c"], C("toolchain", "cc1")),
    ("/usr/bin/x86_64-linux-gnu-as", ["as", "-o", "a.o"], C("toolchain", "as")),
    ("/home/coder/project/hw1/a.out", ["./a.out", "5"], C("student", "binary")),
    ("/workspace/os-1-202012345/hw2/prog", ["./prog"], C("student", "binary")),
    ("/usr/bin/ls", ["ls", "-l"], C("other", "ls")),
    ("", ["gcc", "x.c"], C("compiler", "gcc", ("x.c",))),  # exe unknown: argv[0] decides
]


@pytest.mark.parametrize(("exe", "argv", "want"), CASES)
def test_classify(exe: str, argv: list[str], want: Classification) -> None:
    assert classify(exe, argv) == want


def test_run_kind_maps_to_the_wire() -> None:
    assert classify("/usr/bin/gcc", ["gcc", "a.c"]).run_kind == "build"
    assert classify("/usr/bin/python3", ["python3", "a.py"]).run_kind == "interpreter"
    assert classify("/usr/bin/make", ["make"]).run_kind == "buildtool"
    assert classify("/home/coder/project/a.out", ["./a.out"]).run_kind == "run"
    assert classify("/usr/bin/ls", ["ls"]).run_kind == "other"


def test_workspace_roots_are_configurable() -> None:
    c = classify("/srv/students/x/a.out", ["./a.out"], workspace_roots=("/srv/students",))
    assert c.kind == "student"
    assert classify("/home/coder/projects/a.out", ["./a.out"]).kind == "other"  # not a prefix
