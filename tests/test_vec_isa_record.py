"""``app.vec_isa_record.trust_recorded_probe``: inductor's vector-ISA probe runs once per machine,
its result is written to the folder, and a later call trusts the CPU flags only where it passed."""

from __future__ import annotations

import json
import platform

import pytest
from torch._inductor import config, cpu_vec_isa

from pure_prune.app import vec_isa_record

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 probe")


@pytest.fixture
def clean(monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_VEC_ISA_OK", raising=False)
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
