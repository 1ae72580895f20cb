"""``app.vec_isa_record.trust_recorded_probe``: inductor's vector-ISA probe runs once per machine,
its result is written to the folder, and a later call trusts the CPU flags only where it passed."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest
from torch._inductor import config, cpu_vec_isa

from pure_prune.app import vec_isa_record

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 probe")


@pytest.fixture
def clean(monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_VEC_ISA_OK", raising=False)
    # inductor's check_build as it was before the test (trust_recorded_probe replaces it)
    monkeypatch.setattr(cpu_vec_isa.VecISA, "check_build", cpu_vec_isa.VecISA.check_build)
    with config.patch({"cpp.vec_isa_ok": None}):  # inductor's setting restored after the test
        yield


def test_first_call_probes_and_records_later_calls_read_the_record(tmp_path, clean, monkeypatch):
    probes = []
    real = cpu_vec_isa.valid_vec_isa_list

    def counted():
        probes.append(1)
        return real()

    monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", counted)
    claimed = vec_isa_record.claimed_isas(cpu_vec_isa.x86_isa_checker())
    passed = vec_isa_record.trust_recorded_probe(tmp_path)
    (record_path,) = tmp_path.glob("vec_isa-*.json")
    record = json.loads(record_path.read_text())
    assert record["claimed"] == claimed and record["probed"] == [str(i) for i in real()]
    assert passed == (record["probed"] == claimed) and probes == [1]
    assert config.cpp.vec_isa_ok is (True if passed else None)
    config.cpp.vec_isa_ok = None
    assert vec_isa_record.trust_recorded_probe(tmp_path) == passed and probes == [1]  # read, not probed
    assert list(tmp_path.iterdir()) == [record_path]  # no temporary file left


def test_a_failed_isa_leaves_the_probe_to_inductor(tmp_path, clean, monkeypatch):
    claimed = vec_isa_record.claimed_isas(cpu_vec_isa.x86_isa_checker())
    if not claimed:
        pytest.skip("the CPU claims no vector ISA inductor knows")
    monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", lambda: cpu_vec_isa.supported_vec_isa_list[-1:])
    assert vec_isa_record.trust_recorded_probe(tmp_path) is False
    assert config.cpp.vec_isa_ok is None
    # a torn record is probed again, not trusted
    (path,) = tmp_path.glob("vec_isa-*.json")
    path.write_text("{torn")
    assert vec_isa_record.trust_recorded_probe(tmp_path) is False and config.cpp.vec_isa_ok is None


def test_claimed_isas_are_those_whose_flags_the_cpu_has():
    assert vec_isa_record.claimed_isas([]) == []
    assert vec_isa_record.claimed_isas(["avx2"]) == ["avx2"]  # no avx512 flag: not claimed
    assert "avx512" in vec_isa_record.claimed_isas(["avx2", "avx512"])


def test_the_default_folder_is_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PURE_PRUNE_CACHE", str(tmp_path / "pp"))
    assert vec_isa_record.default_folder() == tmp_path / "pp"
    monkeypatch.delenv("PURE_PRUNE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert vec_isa_record.default_folder() == tmp_path / "xdg" / "pure_prune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert vec_isa_record.default_folder() == tmp_path / "home" / ".cache" / "pure_prune"


def test_the_users_own_setting_is_left_alone(tmp_path, clean, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_VEC_ISA_OK", "0")
    assert vec_isa_record.trust_recorded_probe(tmp_path) is False
    assert config.cpp.vec_isa_ok is None and not list(tmp_path.iterdir())


class _ISA:
    def __init__(self, flags: str) -> None:
        self.flags = flags

    def build_arch_flags(self) -> str:
        return self.flags


def test_remembered_builds_answer_recorded_passes_and_run_the_rest():
    calls, saves, builds = [], [], {}

    def check_build(isa, code):
        calls.append((isa.flags, code))
        return "bad" not in code

    check = vec_isa_record.remembered_builds(check_build, builds, lambda: saves.append(dict(builds)))
    assert check.__wrapped__ is check_build
    avx512, with_bf16 = _ISA("-mavx512f"), _ISA("-mavx512f -mavx512bf16")
    assert check(avx512, "ok code") is True and len(calls) == 1 and len(saves) == 1
    assert check(avx512, "ok code") is True and len(calls) == 1  # answered from the record
    assert check(with_bf16, "ok code") is True and len(calls) == 2  # other flags: another build
    assert check(avx512, "other ok code") is True and len(calls) == 3  # other code: another build
    assert check(avx512, "bad code") is False and check(avx512, "bad code") is False
    assert len(calls) == 5 and len(saves) == 3  # failures are run each time and never recorded
    assert sorted(builds.values()) == [True, True, True]
    fresh = vec_isa_record.remembered_builds(check_build, dict(builds), lambda: None)
    assert fresh(with_bf16, "ok code") is True and len(calls) == 5  # a later process reads the record


def test_trust_recorded_probe_remembers_the_builds_and_wraps_inductor_once(tmp_path, clean):
    current = cpu_vec_isa.VecISA.check_build  # inductor's, or a wrapper an earlier run installed
    real = getattr(current, "__wrapped__", current)
    vec_isa_record.trust_recorded_probe(tmp_path)
    vec_isa_record.trust_recorded_probe(tmp_path)
    assert cpu_vec_isa.VecISA.check_build.__wrapped__ is real  # the second call did not wrap the wrapper
    (path,) = tmp_path.glob("vec_isa-*.json")
    assert isinstance(json.loads(path.read_text())["builds"], dict)


_CHILD = textwrap.dedent(
    """
    import subprocess, sys
    from pure_prune.app import vec_isa_record
    from torch._inductor import cpu_vec_isa
    spawned = []
    real_run = subprocess.run
    def run(cmd, *a, **k):
        spawned.append(cmd[0])
        return real_run(cmd, *a, **k)
    subprocess.run = run
    vec_isa_record.trust_recorded_probe(sys.argv[1])
    isas = [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]  # every ISA's own probes
    print(len(spawned), isas)
    """
)


@pytest.mark.slow
def test_a_later_process_spawns_no_probe(tmp_path, monkeypatch):
    """The second process on a machine builds and loads no test library: the base probes are
    skipped by ``vec_isa_ok`` and the ISAs' own (BF16, VNNI, AMX) by the recorded builds."""
    monkeypatch.delenv("TORCHINDUCTOR_VEC_ISA_OK", raising=False)

    def child() -> tuple[int, str]:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True, text=True, check=True
        ).stdout.split(maxsplit=1)
        return int(out[0]), out[1]

    _, first_isas = child()
    spawned, isas = child()
    assert isas == first_isas
    record = json.loads(next(tmp_path.glob("vec_isa-*.json")).read_text())
    if record["probed"] == record["claimed"]:
        assert spawned == 0
