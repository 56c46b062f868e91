"""doctor --prefix in a conda environment: conda-meta/ says which conda package installed what."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from repack.environment.condameta import read_records, records_by_name
from repack.environment.doctor import diagnose
from repack.environment.probe import prefix_facts
from tests.test_doctor import snapshot_env

EXPORT = "flashinfer_cubin/cubins/flashinfer/trtllm/batched_gemm/trtllmGen_bmm_export"


def conda_prefix(root: Path, records: dict[str, tuple[str, str, list[str]]]) -> Path:
    """A prefix as conda leaves it (no bin/python: read from disk), with these records and their files."""
    (root / "conda-meta").mkdir(parents=True)
    for name, (version, build, files) in records.items():
        (root / "conda-meta" / f"{name}-{version}-{build}.json").write_text(json.dumps(
            {"name": name, "version": version, "build": build, "files": files}))
        for f in files:
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            (root / f).write_text("x")
    return root


def test_a_conda_package_without_dist_info_counts_as_installed(tmp_path):
    site = "lib/python3.11/site-packages"
    prefix = conda_prefix(tmp_path / "env", {
        "python": ("3.11.9", "h0", [f"{site}/.keep"]),
        "flashinfer-cubin-headers": ("0.6.6", "pyhcb8d91d_0", [f"{site}/{EXPORT}/Enums.h"]),
    })
    (prefix / "conda-meta" / "broken-1-0.json").write_text("{not json")  # skipped, not fatal
    interp = prefix_facts(prefix, {})
    assert interp.dists["flashinfer-cubin-headers"].version == "0.6.6"
    assert interp.conda_packages == {"flashinfer-cubin-headers": "flashinfer-cubin-headers-0.6.6-pyhcb8d91d_0"}
    assert "flashinfer-python" not in interp.dists


def test_records_are_read_and_bad_ones_skipped(tmp_path):
    prefix = conda_prefix(tmp_path / "env", {"flashinfer-cubin": ("0.6.6", "pyh_0", ["lib/python3.11/site-packages/a"])})
    (prefix / "conda-meta" / "x-1-0.json").write_text(json.dumps({"name": "x", "version": "1", "build": "0",
                                                                  "files": "not-a-list"}))
    records = read_records(prefix)
    assert [r.label for r in records] == ["flashinfer-cubin-0.6.6-pyh_0"]
    assert set(records_by_name(records, ["flashinfer-cubin", "other"])) == {"flashinfer-cubin"}
    assert read_records(tmp_path / "no-prefix") == []


def test_doctor_names_the_conda_packages():
    env = snapshot_env(headers_pkg="0.6.6")
    conda = {"flashinfer-cubin-headers": "flashinfer-cubin-headers-0.6.6-pyhcb8d91d_0",
             "flashinfer-cubin": "flashinfer-cubin-0.6.6-pyh5e7e94a_0"}
    env = replace(env, interpreter=replace(env.interpreter, conda_packages=conda))
    details = {c.name: c.detail for c in diagnose(env).checks}
    assert details["flashinfer-cubin-headers"].endswith("; conda package flashinfer-cubin-headers-0.6.6-pyhcb8d91d_0")
    assert "not installed" not in details["flashinfer-cubin-headers"]
    assert details["flashinfer-cubin"].endswith("; conda package flashinfer-cubin-0.6.6-pyh5e7e94a_0")
