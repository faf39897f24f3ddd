"""`python -m tools.datapath.tier_bench --dry-run`: KvfsTier and vLLM's own fs tier (and the checksummed-stock bound)
move the same chunks through real files, the loaded bytes are checked, and the table's ratios are the runs' own.
Runs on whichever vLLM is installed (0.32 in CI, 0.33 under `make test-vllm033`), so the script cannot rot; the
full benchmark itself refuses anything but 0.33."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("vllm", reason="the tier benchmark drives vLLM's own fs tier; vLLM is not installed")
pytestmark = pytest.mark.vllm

from connector.compat import VLLM_VERSION  # noqa: E402
from tools.datapath import tier_bench  # noqa: E402


def test_dry_run_measures_both_tiers_and_the_bound(tmp_path, capsys):
    out = tmp_path / "tier.json"
    assert tier_bench.main(["--dry-run", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["vllm"] == VLLM_VERSION and f"vLLM {VLLM_VERSION}" in printed
    cells = data["results"]
    assert [(c["root"], c["threads"]) for c in cells] == [("shm", 1), ("shm", 2), ("disk", 1), ("disk", 2)]
    for c in cells:
        assert c["chunks"] >= 2 * c["threads"]
        assert set(c["o_direct"]) == {"kvfs", "stock"}
        for d in ("store", "load"):
            assert min(c[f"{k}_{d}"] for k in tier_bench.KINDS) > 0
            assert min(c[f"{k}_{d}_cpu_us"] for k in tier_bench.KINDS) > 0  # CPU per file, every tier
            # the submitting thread's share of a file: part of the repetition's wall time
            for k in tier_bench.KINDS:
                assert (
                    0
                    < c[f"{k}_{d}_submit_us"] * c["chunks"] / 1e6
                    < c["chunks"] * c["mib"] * 2**20 / (c[f"{k}_{d}"] * 1e9)
                )
            # One repetition: the ratios are exactly that repetition's kvfs (or bound) over stock.
            assert c[f"{d}_ratio"] == pytest.approx(c[f"kvfs_{d}"] / c[f"stock_{d}"])
            assert c[f"{d}_bound"] == pytest.approx(c[f"bound_{d}"] / c[f"stock_{d}"])
            assert f"**{c[f'{d}_ratio']:.2f}**" in printed
    assert "submitting, us a file store/load: kvfs" in printed


def test_full_run_refuses_another_vllm_than_0_33(monkeypatch, capsys):
    monkeypatch.setattr(tier_bench, "VLLM_VERSION", "0.32.0")
    assert tier_bench.main(["--roots", "shm", "--threads", "1"]) == 2
    assert "vLLM 0.33" in capsys.readouterr().err


def test_kvfs_settings_reach_the_tier_and_the_switch_interval_is_restored(tmp_path, capsys, monkeypatch):
    seen: list[dict] = []
    real = tier_bench.make_tier

    def recording(kind, root, threads, primary, spec, kvfs_settings):  # type: ignore[no-untyped-def]
        tier = real(kind, root, threads, primary, spec, kvfs_settings)
        if kind == "kvfs":
            seen.append(
                {"journal": tier.journal, "direct": tier.pool.direct, "interval": sys.getswitchinterval()}
            )
        return tier

    monkeypatch.setattr(tier_bench, "make_tier", recording)
    before = sys.getswitchinterval()
    argv = [
        "--dry-run",
        "--roots",
        "shm",
        "--kvfs-setting",
        "journal=false",
        "--kvfs-setting",
        "kvfs_direct_io=false",
    ]
    assert tier_bench.main([*argv, "--switch-interval", "0.001"]) == 0
    assert seen and all(s == {"journal": None, "direct": False, "interval": 0.001} for s in seen), seen
    assert sys.getswitchinterval() == before
    assert "kvfs journal=false" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        tier_bench.main(["--dry-run", "--kvfs-setting", "journal"])
