"""Read a catalogue folder into validated product rows and rejects, whatever its layout.

Two layouts are recognised from the folder's contents:

* **challenge**: X csv (`,designation,description,productid,imageid`, first column = row index), optional
  Y csv (`,prdtypecode`, same index; absent = unlabelled products) and images named
  `image_<imageid>_product_<productid>.jpg` anywhere below the folder. The monthly drop
  (`New_X_train.csv`, `New_y_train.csv`) is the same layout.
* **shared**: `rakuten_text.csv` (`row,designation,description,productid,imageid,prdtypecode`),
  `images/` and `images_index.csv` (`file,row,productid,imageid,prdtypecode,...`); products that only have
  an image appear only in `images_index.csv`.

A product with text and an image is one row. One bad row never stops the folder: it becomes a `Reject`
with its file, 1-based record number (header excluded) and reason. A missing, corrupt or oversized image
does not lose a product that has text: the row keeps its text, `image_path` is None and `image_note` says why.
A structural problem that makes a whole file unreadable (missing column, unreadable csv) raises InvalidInput.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePath

from shopclip.errors import InvalidInput
from shopclip.input_policy import ProductLimits, check_image_file, check_text, has_content
from shopclip.settings import option

IMAGE_NAME = re.compile(r"^image_(\d+)_product_(\d+)\.jpe?g$", re.IGNORECASE)

X_COLUMNS = ("designation", "description", "productid", "imageid")
SHARED_TEXT_COLUMNS = ("row", "designation", "description", "productid", "imageid", "prdtypecode")
SHARED_IMAGE_COLUMNS = ("file", "productid", "imageid", "prdtypecode")
SHARED_TEXT_FILE = "rakuten_text.csv"
SHARED_IMAGE_INDEX = "images_index.csv"


@dataclass(frozen=True)
class SourceRow:
    """One valid catalogue product as read from a folder."""

    productid: int
    imageid: int | None
    designation: str
    description: str
    prdtypecode: int | None
    """None for unlabelled products (no Y file): searchable, but they do not vote."""
    image_path: str | None
    """Absolute path of a readable image, or None (see `image_note`)."""
    row_number: int
    """1-based record number in `source_file`, header excluded."""
    source_file: str
    image_note: str | None = None
    """Why an expected image is not used (missing, corrupt, oversized); None when fine or not expected."""


@dataclass(frozen=True)
class Reject:
    """One input row that was not taken, and why."""

    source_file: str
    row_number: int
    productid: str | None
    """The raw productid text when there was one (it may be what is wrong)."""
    field: str
    reason: str


class RowError(ValueError):
    """A problem with one row: becomes a Reject, never escapes this module."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class SourceOptions:
    """What ingest accepts. `known_codes` None accepts any positive code (the catalogue keeps gaining types).
    `limits` is the input policy Classify applies, so the catalogue holds nothing Classify would refuse."""

    known_codes: Collection[int] | None = None
    """Not a flag itself: `--known-codes FILE` is read into it by the CLI."""
    check_images: bool = option(True, "decode every image at ingest (off: presence, size and header only)",
                                flag="image_check")
    limits: ProductLimits = option(default_factory=ProductLimits)


def read_labelled_folder(path: str | Path, options: SourceOptions | None = None
                         ) -> tuple[list[SourceRow], list[Reject]]:
    """Validated rows and rejects of a catalogue folder in either layout (detected from its contents).

    Raises InvalidInput(field="path") when the folder holds no recognisable catalogue file.
    """
    folder = Path(path)
    options = options or SourceOptions()
    if not folder.is_dir():
        raise InvalidInput("path", f"{folder} is not a directory")
    if (folder / SHARED_TEXT_FILE).exists() or (folder / SHARED_IMAGE_INDEX).exists():
        rows, rejects = _read_shared_layout(folder, options)
    else:
        rows, rejects = _read_challenge_layout(folder, options)
    return _drop_duplicate_products(*_reject_unusable(rows, rejects))


def detect_layout(path: str | Path) -> str | None:
    """'shared', 'challenge' or None: what `read_labelled_folder` would read in this folder."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    return layout_of_names(p.name for p in folder.iterdir() if p.is_file())


def layout_of_names(names: Iterable[str]) -> str | None:
    """`detect_layout` from the names of the files at the top of a folder, so an object-store listing can tell
    a drop before anything is downloaded."""
    names = set(names)
    if SHARED_TEXT_FILE in names or SHARED_IMAGE_INDEX in names:
        return "shared"
    return "challenge" if any(_is_x_csv(name) for name in names) else None


def _is_x_csv(name: str) -> bool:
    """An X file of the challenge layout ('New_X_train.csv', 'X_train_update.csv')."""
    path = PurePath(name)
    return path.suffix == ".csv" and "x" in _tokens(path.stem)


# ---------------------------------------------------------------- csv reading


def _read_csv_records(path: Path, required: Collection[str], first_column_name: str | None = None
                      ) -> Iterator[tuple[int, dict[str, str]]]:
    """(record number, row dict) for each data record; undecodable bytes survive as surrogates so that
    only the rows containing them are rejected, not the whole file."""
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    number = 0
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidInput(str(path), "empty csv file (no header)") from None
    if first_column_name is not None and header and header[0].strip() == "":
        header[0] = first_column_name
    header = [name.strip() for name in header]
    missing = [name for name in required if name not in header]
    if missing:
        raise InvalidInput(f"{path.name}:{missing[0]}", f"missing column(s) {missing}; header is {header}")
    try:
        for number, record in enumerate(reader, start=1):
            if len(record) != len(header):
                yield number, {"__error__": f"expected {len(header)} fields, found {len(record)}"}
                continue
            yield number, dict(zip(header, record))
    except csv.Error as exc:
        raise InvalidInput(path.name, f"unreadable csv after record {number}: {exc}") from exc


def _text_field(record: dict[str, str], name: str) -> str:
    """The raw text of a csv column; its length is the input policy's to judge."""
    value = record.get(name, "")
    if value.lower() == "nan":  # pandas writes NaN descriptions this way
        value = ""
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        raise RowError(name, "bad encoding: not valid UTF-8")
    if "\x00" in value:
        raise RowError(name, "bad encoding: NUL character")
    return value


def _int_field(record: dict[str, str], name: str, required: bool = True) -> int | None:
    raw = record.get(name, "").strip()
    if raw == "":
        if required:
            raise RowError(name, "missing")
        return None
    if raw.endswith(".0"):  # pandas float export of an integer column
        raw = raw[:-2]
    if not raw.isdigit():
        raise RowError(name, f"not a non-negative integer: {raw[:40]!r}")
    return int(raw)


def _code_field(record: dict[str, str], options: SourceOptions, name: str = "prdtypecode") -> int:
    code = _int_field(record, name)
    assert code is not None
    if code <= 0:
        raise RowError(name, f"not a positive code: {code}")
    if options.known_codes is not None and code not in options.known_codes:
        raise RowError(name, f"unknown prdtypecode {code} (not in the known codes)")
    return code


# ---------------------------------------------------------------- images


def _scan_images(folder: Path) -> dict[tuple[int, int], Path]:
    """(imageid, productid) -> file, for every challenge-named image below `folder`."""
    found: dict[tuple[int, int], Path] = {}
    for file in folder.rglob("image_*_product_*"):
        match = IMAGE_NAME.match(file.name)
        if match and file.is_file():
            found[(int(match.group(1)), int(match.group(2)))] = file.resolve()
    return found


def image_problem(path: Path, options: SourceOptions) -> str | None:
    """Why Classify could not take this image file, or None when it could."""
    try:
        check_image_file(path, options.limits, decode=options.check_images)
    except InvalidInput as problem:
        return str(problem)
    return None


def _attach_image(row: SourceRow, path: Path | None, options: SourceOptions) -> SourceRow:
    if path is None:
        if row.imageid is None:
            return row
        return replace(row, image_note=f"image file missing: image_{row.imageid}_product_{row.productid}.jpg")
    problem = image_problem(path, options)
    if problem:
        return replace(row, image_path=None, image_note=problem)
    return replace(row, image_path=str(path), image_note=None)


# ---------------------------------------------------------------- challenge layout


def _tokens(stem: str) -> list[str]:
    return [token.lower() for token in re.split(r"[_\-. ]+", stem) if token]


def _challenge_file_pairs(folder: Path) -> list[tuple[Path, Path | None]]:
    """(X csv, its Y csv or None) for each X file at the top of the folder.

    Y pairs with X by name (`New_X_train` <-> `New_y_train`); when the names do not line up (the official
    `X_train_update.csv` / `Y_train_CVw08PX.csv`) a single X and a single Y in the folder belong together."""
    csvs = sorted(p for p in folder.glob("*.csv") if p.is_file())
    x_files = [p for p in csvs if _is_x_csv(p.name)]
    y_files = [p for p in csvs if "y" in _tokens(p.stem)]
    pairs = []
    for x_file in x_files:
        wanted = ["y" if t == "x" else t for t in _tokens(x_file.stem)]
        match = [y for y in y_files if _tokens(y.stem) == wanted]
        if not match and len(x_files) == 1 and len(y_files) == 1:
            match = y_files
        pairs.append((x_file, match[0] if match else None))
    return pairs


def _read_challenge_layout(folder: Path, options: SourceOptions) -> tuple[list[SourceRow], list[Reject]]:
    pairs = _challenge_file_pairs(folder)
    if not pairs:
        raise InvalidInput("path", f"{folder} holds no catalogue: expected X/Y csv files "
                                   f"(X_train.csv, New_X_train.csv, ...) or {SHARED_TEXT_FILE}")
    images = _scan_images(folder)
    rows: list[SourceRow] = []
    rejects: list[Reject] = []
    for x_file, y_file in pairs:
        file_rows, file_rejects = _read_challenge_pair(x_file, y_file, images, options)
        rows += file_rows
        rejects += file_rejects
    return rows, rejects


def _read_labels(y_file: Path, options: SourceOptions) -> tuple[dict[str, tuple[int, int]], list[Reject]]:
    """Row index -> (record number, code); bad label rows become rejects of the Y file."""
    labels: dict[str, tuple[int, int]] = {}
    rejects = []
    for number, record in _read_csv_records(y_file, ("index", "prdtypecode"), first_column_name="index"):
        try:
            if "__error__" in record:
                raise RowError("row", record["__error__"])
            index = record["index"].strip()
            if index in labels:
                raise RowError("index", f"duplicate row index {index!r} in the Y file")
            labels[index] = (number, _code_field(record, options))
        except RowError as err:
            rejects.append(Reject(y_file.name, number, None, err.field, err.reason))
    return labels, rejects


def _read_challenge_pair(x_file: Path, y_file: Path | None, images: dict[tuple[int, int], Path],
                         options: SourceOptions) -> tuple[list[SourceRow], list[Reject]]:
    labels, rejects = _read_labels(y_file, options) if y_file else ({}, [])
    rows: list[SourceRow] = []
    seen_indexes: set[str] = set()
    for number, record in _read_csv_records(x_file, X_COLUMNS, first_column_name="index"):
        raw_productid = record.get("productid")
        try:
            if "__error__" in record:
                raise RowError("row", record["__error__"])
            index = record.get("index", "").strip()
            seen_indexes.add(index)
            code = None
            if y_file is not None:
                if index not in labels:
                    raise RowError("prdtypecode", f"X/Y mismatch: row index {index!r} has no valid label "
                                                  f"in {y_file.name}")
                code = labels[index][1]
            row = _challenge_row(record, code, number, x_file.name, options)
            image = images.get((row.imageid, row.productid)) if row.imageid is not None else None
            rows.append(_attach_image(row, image, options))
        except RowError as err:
            rejects.append(Reject(x_file.name, number, raw_productid, err.field, err.reason))
    for index, (number, _) in labels.items():
        if index not in seen_indexes:
            rejects.append(Reject(y_file.name if y_file else "", number, None, "index",
                                  f"X/Y mismatch: label row index {index!r} has no row in {x_file.name}"))
    return rows, rejects


def _challenge_row(record: dict[str, str], code: int | None, number: int, source: str,
                   options: SourceOptions) -> SourceRow:
    productid = _int_field(record, "productid")
    assert productid is not None
    designation = _text_field(record, "designation")
    description = _text_field(record, "description")
    imageid = _int_field(record, "imageid", required=False)
    try:  # an image is only expected here; _reject_unusable judges again once it is known to be usable
        check_text(designation, description, imageid is not None, options.limits, field="")
    except InvalidInput as err:
        raise RowError(err.field, err.message) from None
    return SourceRow(productid, imageid, designation, description, code, None, number, source)


# ---------------------------------------------------------------- shared layout


def _read_shared_layout(folder: Path, options: SourceOptions) -> tuple[list[SourceRow], list[Reject]]:
    rows: dict[int, SourceRow] = {}
    rejects: list[Reject] = []
    text_file = folder / SHARED_TEXT_FILE
    if text_file.exists():
        for number, record in _read_csv_records(text_file, SHARED_TEXT_COLUMNS):
            try:
                if "__error__" in record:
                    raise RowError("row", record["__error__"])
                row = _challenge_row(record, _code_field(record, options), number, text_file.name, options)
                if row.productid in rows:
                    raise RowError("productid", f"duplicate productid {row.productid}")
                rows[row.productid] = row
            except RowError as err:
                rejects.append(Reject(text_file.name, number, record.get("productid"), err.field, err.reason))
    index_file = folder / SHARED_IMAGE_INDEX
    if index_file.exists():
        rejects += _merge_image_index(folder, index_file, rows, options)
    return list(rows.values()), rejects


def _merge_image_index(folder: Path, index_file: Path, rows: dict[int, SourceRow],
                       options: SourceOptions) -> list[Reject]:
    """Attach images to text rows of the same product; image-only products become rows of their own."""
    rejects = []
    text_rows = {pid for pid, row in rows.items() if row.source_file == SHARED_TEXT_FILE}
    for number, record in _read_csv_records(index_file, SHARED_IMAGE_COLUMNS):
        try:
            if "__error__" in record:
                raise RowError("row", record["__error__"])
            productid = _int_field(record, "productid")
            imageid = _int_field(record, "imageid")
            code = _code_field(record, options)
            assert productid is not None
            path = folder / "images" / record["file"].strip()
            existing = rows.get(productid)
            if existing is not None and existing.source_file == SHARED_TEXT_FILE and productid in text_rows:
                if existing.prdtypecode != code:
                    raise RowError("prdtypecode", f"conflicts with {SHARED_TEXT_FILE} record "
                                                  f"{existing.row_number} ({existing.prdtypecode} != {code})")
                rows[productid] = _attach_image(replace(existing, imageid=imageid), path, options)
                text_rows.discard(productid)
                continue
            if existing is not None:
                raise RowError("productid", f"duplicate productid {productid}")
            problem = image_problem(path, options)
            if problem:  # nothing else to keep of an image-only product
                raise RowError("image", problem)
            rows[productid] = SourceRow(productid, imageid, "", "", code, str(path.resolve()), number,
                                        index_file.name)
        except RowError as err:
            rejects.append(Reject(index_file.name, number, record.get("productid"), err.field, err.reason))
    return rejects


# ---------------------------------------------------------------- cross-file checks


def _reject_unusable(rows: list[SourceRow], rejects: list[Reject]) -> tuple[list[SourceRow], list[Reject]]:
    """A product with no text whose image cannot be used has nothing Classify could read: it is rejected here,
    not accepted into the catalogue to fail later at embedding time."""
    kept, rejects = [], list(rejects)
    for row in rows:
        if has_content(row.designation, row.description, row.image_path is not None):
            kept.append(row)
        else:
            rejects.append(Reject(row.source_file, row.row_number, str(row.productid), "image",
                                  f"no designation or description, and {row.image_note or 'no image file'}"))
    return kept, rejects


def _drop_duplicate_products(rows: list[SourceRow], rejects: list[Reject]
                             ) -> tuple[list[SourceRow], list[Reject]]:
    """A productid appears once per folder: the first occurrence wins, later ones are rejected."""
    kept: dict[int, SourceRow] = {}
    rejects = list(rejects)
    for row in rows:
        first = kept.get(row.productid)
        if first is None:
            kept[row.productid] = row
        else:
            rejects.append(Reject(row.source_file, row.row_number, str(row.productid), "productid",
                                  f"duplicate productid (first at {first.source_file} record {first.row_number})"))
    return list(kept.values()), rejects
