"""A student who renames their pod's hostname (in their own UTS namespace) to another
student's: the build must be flagged identity_mismatch or attributed to the real owner of
the workspace (the bind mount) -- never silently credited to the other student. procmon
does both: the run and its source snapshot go to the workspace mounted in the pod, flagged."""

from __future__ import annotations

from .api import runs, versions, wait_versions
from .conftest import StudentFactory, needs_root
from .procs import System, wait_until
from .students import sha

pytestmark = needs_root


def test_hostname_changed_to_another_student(system: System, student: StudentFactory) -> None:
    mallory, victim, hw = student("202600001"), student("202600002"), "hw5"
    mallory.sh(f"mkdir -p {hw}", cwd="")
    victim.sh(f"mkdir -p {hw}", cwd="")
    victim.vim_save("v.c", b"int victim;\n", hw)
    wait_versions(system.api, victim, hw, "v.c", 1)
    mallory.vim_save("m.c", b"int mallory;\n", hw)
    wait_versions(system.api, mallory, hw, "m.c", 1)
    mallory.sh(f"hostname {victim.hostname}", cwd="")
    try:
        out = mallory.run(["gcc", "-c", "m.c"], cwd=hw)
    finally:  # the pod is shared by the session: give it its own name back
        mallory.sh(f"hostname {mallory.hostname}", cwd="")
    assert out.returncode == 0
    mallory.vim_save("m2.c", b"int marker;\n", hw)
    wait_versions(system.api, mallory, hw, "m2.c", 1)
    system.drained()

    def gcc_runs() -> list[dict[str, object]]:
        return [
            r
            for who in (mallory, victim)
            for r in runs(system.api, who, hw)
            if r["argv"] == ["gcc", "-c", "m.c"]
        ]

    (run,) = wait_until(gcc_runs, 30, "the spoofed build")
    credited_to_victim = run["student_id"] == victim.student_id
    assert not credited_to_victim or run["identity_mismatch"], run
    # procmon's rule: the files are the mounted workspace's, so the run is too, flagged
    assert run["student_id"] == mallory.student_id and run["identity_mismatch"], run
    assert run["hostname"] == victim.hostname  # what the pod claimed, kept as evidence
    (src,) = run["sources"]
    assert (src["path"], src["sha256"]) == ("m.c", sha(b"int mallory;\n")), run
    assert versions(system.api, victim, hw, "m.c", source=None) == []
