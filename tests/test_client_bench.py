"""bench/serve.py stays runnable: a tiny end-to-end run on the fake bundle (server child process included)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from support.catalogue import FAKE_BUNDLE

BENCH = Path(__file__).resolve().parents[1] / "bench" / "serve.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_serve", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_percentile_is_nearest_rank(bench):
    values = [float(v) for v in range(1, 101)]
    assert (bench.percentile(values, 50), bench.percentile(values, 99), bench.percentile(values, 100)) == (50, 99, 100)
    assert bench.percentile([7.0], 99) == 7.0


def test_generated_products_when_the_data_file_is_absent(bench, tmp_path):
    products = bench.load_products(tmp_path / "absent.csv", 20)
    assert len(products) == 20 and all(p.designation for p in products)


def test_fake_bundle_run_reports_both_sides_and_the_targets(bench, tmp_path, capsys):
    out = tmp_path / "figures.json"
    code = bench.main(["--bundle", FAKE_BUNDLE, "--data", str(tmp_path / "none.csv"), "--products", "32",
                       "--batch-sizes", "1", "4", "--concurrency", "1", "4", "--seconds", "0.3",
                       "--json-out", str(out)])
    assert code == 0
    figures = json.loads(out.read_text())
    assert [p["batch_size"] for p in figures["raw"]] == [1, 4]
    assert [p["concurrency"] for p in figures["served"]] == [1, 4]
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in figures["served"])
    assert all(p["p50_ms"] <= p["p99_ms"] for p in figures["served"])
    alone, crowded = figures["served"]
    assert alone["mean_batch"] == 1.0  # one caller: every forward carries exactly its one product
    assert 1.0 <= crowded["mean_batch"] <= 4.0
    printed = capsys.readouterr().out
    assert "throughput: (b) at concurrency 4" in printed and "overhead:" in printed
    assert "rate:       (b) at concurrency 4" in printed and "lone:       (b) p50 at concurrency 1" in printed


def test_a_run_where_every_call_fails_exits_non_zero(bench, tmp_path, monkeypatch, capsys):
    import grpc

    async def refused(self, *args, **kwargs):
        raise bench.ShopclipRpcError(grpc.StatusCode.UNAVAILABLE, "refused", "Classify")

    monkeypatch.setattr(bench.AsyncShopclipClient, "classify", refused)
    code = bench.main(["--bundle", FAKE_BUNDLE, "--data", str(tmp_path / "none.csv"), "--products", "8",
                       "--batch-sizes", "1", "--concurrency", "1", "--seconds", "0.2"])
    assert code == 1
    assert "no Classify call succeeded at concurrency [1]" in capsys.readouterr().err


def test_split_placement_gives_the_load_generator_a_core_of_its_own(bench, monkeypatch):
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert bench.placement("split") == ({0, 1, 2}, {3})
    assert bench.placement("shared") == ({0, 1, 2, 3}, {0, 1, 2, 3})
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert bench.placement("split") == ({5}, {5})  # nothing to split: everything shares the one core


def test_the_reference_is_the_mean_of_raw_before_and_after(bench):
    before = [bench.RawPoint(1, 200.0, 5.0), bench.RawPoint(16, 300.0, 53.0)]
    after = [bench.RawPoint(1, 220.0, 4.0), bench.RawPoint(16, 280.0, 57.0)]
    assert bench.mean_of(before, after) == [bench.RawPoint(1, 210.0, 4.5), bench.RawPoint(16, 290.0, 55.0)]


def test_a_server_answering_with_another_model_than_the_bundle_is_refused(bench, tmp_path, monkeypatch, capsys):
    """An index built with another model makes the server follow that model: (b) would time something else."""
    from shopclip.model import load_embedder

    real_load = bench.load_raw_embedder

    def another_release(bundle, threads):
        embedder = real_load(bundle, threads)
        embedder.release = "a-bundle-copy-with-another-config"
        return embedder

    monkeypatch.setattr(bench, "load_raw_embedder", another_release)
    code = bench.main(["--bundle", FAKE_BUNDLE, "--data", str(tmp_path / "none.csv"), "--products", "8",
                       "--batch-sizes", "1", "--concurrency", "1", "--seconds", "0.2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "a-bundle-copy-with-another-config" in err and load_embedder(FAKE_BUNDLE).release in err
