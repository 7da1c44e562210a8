"""bench/embed.py: argument checks, timing arithmetic and table layout; the real run is slow."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH_PATH = Path(__file__).resolve().parents[1] / "bench" / "embed.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_embed", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_batches_are_parsed_and_checked(bench: ModuleType) -> None:
    assert bench.parse_args(["--batches", "1,8,32"]).batches == [1, 8, 32]
    for bad in (["--batches", "1,x"], ["--batches", "0"], ["--seconds", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_rate_is_batch_over_median_call_time(bench: ModuleType) -> None:
    calls: list[int] = []

    def embed(items: list) -> None:
        calls.append(len(items))
        time.sleep(0.01 if len(calls) != 3 else 0.2)  # one slow outlier call must not move the median

    rate = bench.items_per_second(embed, list(range(10)), batch=4, seconds=0.05, device=torch.device("cpu"))
    assert len(calls) >= 1 + 3 and set(calls) == {4}
    assert 4 / 0.02 < rate < 4 / 0.01 * 1.05


def test_table_puts_candidates_side_by_side(bench: ModuleType) -> None:
    results = {("text", 1): {"a": 10.0, "b": 2.5}, ("image", 32): {"a": 3.25}}
    lines = bench.format_table(results, ["a", "b"]).splitlines()
    assert lines[0].split() == ["modality", "batch", "a", "b"]
    assert lines[2].split() == ["text", "1", "10.0", "2.5"]
    assert lines[3].split() == ["image", "32", "3.2", "-"]


def test_synthetic_inputs_look_like_catalogue_rows(bench: ModuleType) -> None:
    texts, images = bench.synthetic_inputs()
    assert len(texts) >= 32 and all(texts) and images[0][:2] == b"\xff\xd8"  # JPEG


@pytest.mark.slow
def test_end_to_end_run_prints_both_models(bench: ModuleType, capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--seconds", "0.01", "--batches", "2", "--threads", "1"]) == 0
    table = capsys.readouterr().out
    from shopclip.model.config import ModelConfig

    towers = "+".join(ModelConfig().text_towers)  # the default towers, whatever they are
    assert f"shopclip {towers} / efficientnet_lite0" in table and "open_clip ViT-B-32" in table
    assert len([line for line in table.splitlines() if line.split()[:1] in (["text"], ["image"])]) == 2
