"""`tower_precision`: one decision for what the pretrained text towers compute in."""

from __future__ import annotations

import pytest
import torch

from shopclip.model import precision
from shopclip.model.config import ModelConfig


def test_auto_is_bfloat16_only_where_it_is_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "native_bfloat16", lambda: True)
    assert precision.resolve_precision("auto") == torch.bfloat16
    monkeypatch.setattr(precision, "native_bfloat16", lambda: False)
    assert precision.resolve_precision("auto") == torch.float32
    assert precision.resolve_precision("bfloat16") == torch.bfloat16  # named: taken as asked


def test_unknown_precisions_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="tower_precision"):
        ModelConfig(tower_precision="fp8")
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_precision("half")


def test_a_config_without_the_field_reads_as_auto() -> None:
    """Bundles written before the field existed load with the default."""
    assert ModelConfig.from_dict({"text_towers": ["ngram"]}).tower_precision == "auto"
