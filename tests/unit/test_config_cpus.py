"""The default `workers`: the CPUs this process may use (affinity and the cgroup v2 quota), not the
host's core count. Fake cgroup trees stand in for /sys/fs/cgroup and /proc/self/cgroup."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import cpus
from gateway.config.cpus import cgroup_cpu_quota, usable_cpus
from gateway.config.load import parse_config


def cgroup(tmp_path: Path, own: str, limits: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup tree with `cpu.max` files ({folder relative to the root: content}) and a
    /proc/self/cgroup naming `own` as this process's cgroup."""
    root = tmp_path / "cgroup"
    (root / own.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for folder, content in limits.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(content + "\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::{own}\n")
    return root, proc


def test_a_2_cpu_container_on_a_64_core_host_gets_2(tmp_path):
    root, proc = cgroup(tmp_path, "/", {".": "200000 100000"})  # docker --cpus=2 (cgroup namespace)
    assert usable_cpus(root, proc, affinity=lambda: 64) == 2


def test_a_fractional_quota_rounds_up(tmp_path):
    root, proc = cgroup(tmp_path, "/", {".": "150000 100000"})  # 1.5 CPUs
    assert usable_cpus(root, proc, affinity=lambda: 64) == 2
    root, proc = cgroup(tmp_path / "small", "/", {".": "10000 100000"})  # 0.1 CPU: still one worker
    assert usable_cpus(root, proc, affinity=lambda: 64) == 1


def test_no_quota_means_the_affinity_mask(tmp_path):
    root, proc = cgroup(tmp_path, "/", {".": "max 100000"})
    assert cgroup_cpu_quota(root, proc) is None
    assert usable_cpus(root, proc, affinity=lambda: 3) == 3


def test_an_affinity_mask_smaller_than_the_quota_wins(tmp_path):
    root, proc = cgroup(tmp_path, "/", {".": "800000 100000"})
    assert usable_cpus(root, proc, affinity=lambda: 2) == 2  # taskset -c 0,1 in an 8-CPU container


def test_the_tightest_quota_on_the_way_to_the_root_binds(tmp_path):
    # A systemd slice limited to 3 CPUs holding a service limited to 6: the slice binds.
    root, proc = cgroup(tmp_path, "/gateway.slice/gateway.service",
                        {"gateway.slice": "300000 100000", "gateway.slice/gateway.service": "600000 100000"})
    assert cgroup_cpu_quota(root, proc) == 3.0
    assert usable_cpus(root, proc, affinity=lambda: 64) == 3


@pytest.mark.parametrize("content", ["", "garbage", "-1 100000", "100000 0", "max"])
def test_a_missing_or_malformed_cpu_max_is_no_limit(tmp_path, content):
    root, proc = cgroup(tmp_path, "/", {".": content})
    assert usable_cpus(root, proc, affinity=lambda: 4) == 4


def test_cgroup_v1_or_no_proc_file_is_no_limit(tmp_path):
    root = tmp_path / "cgroup"
    root.mkdir()
    v1 = tmp_path / "v1"
    v1.write_text("4:memory:/docker/abc\n1:cpu:/docker/abc\n")  # no "0::" line: not cgroup v2
    assert cgroup_cpu_quota(root, v1) is None
    assert cgroup_cpu_quota(root, tmp_path / "absent") is None
    assert usable_cpus(root, tmp_path / "absent", affinity=lambda: 5) == 5


def test_never_less_than_one(tmp_path):
    assert usable_cpus(tmp_path, tmp_path / "absent", affinity=lambda: 0) == 1


def test_the_config_default_is_the_usable_count(monkeypatch):
    monkeypatch.setattr("gateway.config.load.usable_cpus", lambda: 3)
    minimal = {"base_domain": "proxy.localhost", "services": {"elvis": {"upstream": "http://127.0.0.1:9000"}}}
    assert parse_config(minimal, environ={}).workers == 3
    assert parse_config(minimal | {"workers": 7}, environ={}).workers == 7  # an explicit count is kept


def test_this_machine_gives_a_sane_count():
    assert 1 <= usable_cpus() <= (cpus.os.cpu_count() or 1)
