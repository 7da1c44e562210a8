"""`shopclip classify | search | embed | info | feedback`: call a running server and print a readable table.

A product comes from flags (`--title`, `--description`, `--image PATH`) or from one row of a
challenge-format CSV (`--csv X_train.csv --row N`, N being the first, index column; `--images DIR`
attaches the row's `image_<imageid>_product_<productid>.jpg`). `--json` prints the typed result for
machines. Only grpcio, protobuf and the stdlib are imported, so this works on a client-only install.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from shopclip.client.errors import ShopclipRpcError
from shopclip.client.results import ClassifyResult, EmbedResult, FeedbackResult, Info, Neighbor, SearchResult, Versions
from shopclip.client.sync import ShopclipClient
from shopclip.errors import InvalidInput, NotConfigured, NotFound, NotReady, Overloaded, ShopclipError
from shopclip.products import ProductInput

# gRPC status -> the domain error whose exit status shopclip.errors.EXIT_CODES already defines.
STATUS_AS_DOMAIN_ERROR: dict[grpc.StatusCode, type[ShopclipError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: NotReady,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.FAILED_PRECONDITION: NotConfigured,
}
MAX_CELL_CHARS = 60
CODES_SHOWN = 30  # the real catalogue has over 1000 types: `info` lists the first ones, --json all
CHALLENGE_COLUMNS = ("designation", "description", "productid", "imageid")

Handler = Callable[[argparse.Namespace], int]


def register(subparsers: argparse._SubParsersAction) -> None:
    classify = subparsers.add_parser("classify", help="predict the prdtypecode of a product (server call)")
    _add_connection_args(classify)
    _add_product_args(classify)
    classify.add_argument("--top-k", type=int, help="ranked codes to return (server default 5)")
    classify.add_argument("--productid", type=int, help="the listing's id, recorded with the answer (with --csv: "
                                                         "the row's productid)")
    classify.set_defaults(handler=_classify)

    search = subparsers.add_parser("search", help="similar catalogue products (server call)")
    _add_connection_args(search)
    _add_product_args(search)
    search.add_argument("--productid", type=int, help="query with a catalogue product's stored vector")
    search.add_argument("--top-k", type=int, help="results to return (server default 10)")
    search.add_argument("--code", type=int, dest="prdtypecode", help="only products of this prdtypecode")
    search.set_defaults(handler=_search)

    embed = subparsers.add_parser("embed", help="embed a product into the model's shared space (server call)")
    _add_connection_args(embed)
    _add_product_args(embed)
    embed.set_defaults(handler=_embed)

    info = subparsers.add_parser("info", help="model bundle, index and classes the server runs")
    _add_connection_args(info)
    info.set_defaults(handler=_info)

    feedback = subparsers.add_parser(
        "feedback", help="confirm or correct a product's prdtypecode (server call; needs --prediction-log)",
        description="Tell the server the right prdtypecode of a product, by --productid and/or the --request-id "
                    "of its Classify answer. A correction becomes a labelled catalogue row at the next "
                    "`shopclip corrections apply` and index build. A product the catalogue does not hold yet "
                    "can be sent along (--title/--csv/--image) so it joins the catalogue with this label.")
    _add_connection_args(feedback)
    feedback.add_argument("--code", type=int, required=True, dest="prdtypecode", help="the right prdtypecode")
    feedback.add_argument("--productid", type=int, help="the listing's productid")
    feedback.add_argument("--request-id", help="request_id of the Classify answer this is about")
    feedback.add_argument("--actor", default="cli", help="who decides, for the audit trail (default: cli)")
    _add_product_args(feedback)
    feedback.set_defaults(handler=_feedback)


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--target", help="server host:port (env SHOPCLIP_TARGET, default localhost:50051)")
    group.add_argument("--token", help="bearer token (env SHOPCLIP_TOKEN)")
    group.add_argument("--tls-ca", type=Path, help="PEM root certificate: use TLS (env SHOPCLIP_TLS_CA)")
    group.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    group.add_argument("--timeout", type=float, help="deadline in seconds, retries included (default 10)")
    group.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_product_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("product (a title, a CSV row, an image, or title/row + image)")
    group.add_argument("--title", help="designation (French product title)")
    group.add_argument("--description", help="free-text description")
    group.add_argument("--image", type=Path, help="image file (JPEG, PNG or WebP)")
    group.add_argument("--csv", type=Path, help="challenge-format X csv (,designation,description,productid,imageid)")
    group.add_argument("--row", type=int, help="row index (first CSV column) of the product in --csv")
    group.add_argument("--images", type=Path, help="with --csv: folder of image_<imageid>_product_<productid>.jpg")


def product_from_args(args: argparse.Namespace) -> ProductInput | None:
    """The product the flags describe, or None when none was given (search --productid)."""
    if args.csv is not None and (args.title or args.description):
        raise InvalidInput("--csv", "give either --csv/--row or --title/--description, not both")
    product = read_csv_product(args.csv, args.row, args.images) if args.csv is not None else None
    if product is None and (args.title or args.description):
        product = ProductInput(designation=args.title or "", description=args.description or "")
    if args.image is not None:
        image = _read_image(args.image, "--image")
        product = dataclasses.replace(product, image=image) if product else ProductInput(image=image)
    return product


def read_csv_product(path: Path, row: int | None, images: Path | None) -> ProductInput:
    """The row of a challenge-format CSV whose first (index) column is `row`."""
    record = read_csv_record(path, row)
    image = None
    if images is not None:
        name = f"image_{record['imageid'].strip()}_product_{record['productid'].strip()}.jpg"
        image = _read_image(images / name, "--images")
    return ProductInput(designation=record["designation"] or "", description=record["description"] or "", image=image)


def read_csv_productid(path: Path, row: int | None) -> int | None:
    """The productid of that row (None when the cell is empty)."""
    value = read_csv_record(path, row)["productid"].strip()
    try:
        return int(value) if value else None
    except ValueError:
        raise InvalidInput("--csv", f"row {row} of {path}: productid {value!r} is not an integer") from None


def read_csv_record(path: Path, row: int | None) -> dict[str, str]:
    if row is None:
        raise InvalidInput("--row", "--csv needs --row N (the value of the CSV's first, index column)")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in CHALLENGE_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise InvalidInput("--csv", f"{path} lacks the challenge column(s) {', '.join(missing)}")
            index_column = reader.fieldnames[0]
            record = next((r for r in reader if r[index_column].strip() == str(row)), None)
    except OSError as error:
        raise InvalidInput("--csv", f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput("--csv", f"{path} is not UTF-8 text") from None
    if record is None:
        raise InvalidInput("--row", f"no row with index {row} in {path}")
    return record


def _read_image(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidInput(flag, f"cannot read {path}: {error.strerror}") from None


def _required_product(args: argparse.Namespace) -> ProductInput:
    product = product_from_args(args)
    if product is None:
        raise InvalidInput("--title", "give a product: --title TEXT, --csv FILE --row N, or --image PATH")
    return product


def _client(args: argparse.Namespace) -> ShopclipClient:
    return ShopclipClient(args.target, token=args.token, tls_ca=args.tls_ca, tls=args.tls, timeout=args.timeout)


def reports_rpc_errors(handler: Handler) -> Handler:
    """A failed call prints one line and exits with the status the root CLI gives the same domain error."""

    @functools.wraps(handler)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ShopclipRpcError as error:
            from shopclip.errors import EXIT_CODES  # the one exit-status table

            print(f"shopclip {args.command}: error: {error}", file=sys.stderr)
            return EXIT_CODES.get(STATUS_AS_DOMAIN_ERROR.get(error.code), 1)  # type: ignore[arg-type]

    return wrapper


@reports_rpc_errors
def _classify(args: argparse.Namespace) -> int:
    product = _required_product(args)
    productid = args.productid if args.productid is not None else _csv_productid(args)
    with _client(args) as client:
        result = client.classify(product, top_k=args.top_k, productid=productid)
    print(_as_json(result) if args.json else format_classify(result))
    return 0


@reports_rpc_errors
def _search(args: argparse.Namespace) -> int:
    product = product_from_args(args)
    if (product is None) == (args.productid is None):
        raise InvalidInput("--productid", "give either --productid N or a product (--title, --csv/--row, --image)")
    with _client(args) as client:
        result = client.search(product, productid=args.productid, top_k=args.top_k, prdtypecode=args.prdtypecode)
    print(_as_json(result) if args.json else format_search(result))
    return 0


@reports_rpc_errors
def _embed(args: argparse.Namespace) -> int:
    product = _required_product(args)
    with _client(args) as client:
        result = client.embed([product])
    print(_as_json(result) if args.json else format_embed(result))
    return 0


@reports_rpc_errors
def _feedback(args: argparse.Namespace) -> int:
    product = product_from_args(args)
    productid = args.productid if args.productid is not None else _csv_productid(args)
    if productid is None and not args.request_id:
        raise InvalidInput("--productid", "say which product: --productid N and/or --request-id ID")
    with _client(args) as client:
        result = client.feedback(args.prdtypecode, productid=productid, request_id=args.request_id,
                                 product=product, actor=args.actor)
    print(_as_json(result) if args.json else format_feedback(result, args.prdtypecode))
    return 0


def _csv_productid(args: argparse.Namespace) -> int | None:
    """The productid of the --csv/--row product, so that what is recorded names the listing."""
    if args.csv is None or args.row is None:
        return None
    return read_csv_productid(args.csv, args.row)


@reports_rpc_errors
def _info(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.info()
    print(_as_json(result) if args.json else format_info(result))
    return 0


def _as_json(result: object) -> str:
    return json.dumps(dataclasses.asdict(result), ensure_ascii=False, indent=2)  # type: ignore[arg-type]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain-text columns: numbers right-aligned, text left-aligned, one space-padded header line."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
               for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    text = " ".join(str(value).split())
    return text if len(text) <= MAX_CELL_CHARS else text[:MAX_CELL_CHARS - 1] + "…"


def _neighbors_table(neighbors: Sequence[Neighbor]) -> str:
    return format_table(["productid", "prdtypecode", "similarity", "designation"],
                        [[n.productid, n.prdtypecode, n.similarity, n.designation or "(no title: image only)"]
                         for n in neighbors])


SHOWN_VOTERS = 10
"""Classify may return dozens of voters (the bundle's tuned k); a table shows the closest ones."""


def format_classify(result: ClassifyResult) -> str:
    codes = format_table(["rank", "prdtypecode", "probability"],
                         [[rank, p.code, p.probability] for rank, p in enumerate(result.predictions, 1)])
    verdict = "ABSTAIN: route to human review" if result.abstain else f"prdtypecode {result.code}"
    parts = [codes, "", verdict, _versions_line(result.versions)]
    if result.neighbors:
        shown = result.neighbors[:SHOWN_VOTERS]
        title = (f"the {len(shown)} closest of {len(result.neighbors)} neighbours that voted:"
                 if len(result.neighbors) > len(shown) else "neighbours that voted:")
        parts += ["", title, _neighbors_table(shown)]
    return "\n".join(parts)


def format_feedback(result: FeedbackResult, prdtypecode: int) -> str:
    if result.was_correct is None:
        verdict = f"stored: prdtypecode {prdtypecode} (no logged prediction to compare)"
    elif result.was_correct:
        verdict = f"stored: confirms the predicted prdtypecode {prdtypecode}"
    else:
        verdict = f"stored: corrects prdtypecode {result.predicted_code} to {prdtypecode}"
    product = f"productid {result.productid}" if result.productid is not None else "(no productid)"
    return f"{verdict}\n{product} · feedback {result.feedback_id}"


def format_search(result: SearchResult) -> str:
    table = _neighbors_table(result.neighbors) if result.neighbors else "no similar product found"
    return "\n".join([table, "", _versions_line(result.versions)])


def format_embed(result: EmbedResult) -> str:
    shown = 8
    rows = [[i, result.dim, " ".join(f"{v:+.4f}" for v in vector[:shown]) + (" …" if len(vector) > shown else "")]
            for i, vector in enumerate(result.vectors)]
    return "\n".join([format_table(["product", "dim", "values"], rows), "",
                      _versions_line(result.versions)])


def format_info(info: Info) -> str:
    rows = [["model fingerprint", info.versions.model_fingerprint],
            ["model release", info.versions.model_release or "(not reported)"],
            ["architecture", info.architecture],
            ["embedding dim", info.embed_dim],
            ["classes", _codes_summary(info.prdtypecodes)],
            ["index version", info.versions.index_version or "(no index)"],
            ["index", f"{info.index_type}, {info.index_size} labelled vectors"],
            ["k-NN voters", info.knn_k],
            ["abstain below", f"{info.abstain_threshold:.2f}"],
            *([f"metric {name}", f"{value:.4f}"] for name, value in sorted(info.metrics.items()))]
    width = max(len(str(key)) for key, _ in rows)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)


def _codes_summary(codes: Sequence[int]) -> str:
    shown = " ".join(map(str, codes[:CODES_SHOWN]))
    return f"{len(codes)}: {shown}" + (" …" if len(codes) > CODES_SHOWN else "")


def _versions_line(versions: Versions) -> str:
    release = f" (release {versions.model_release})" if versions.model_release else ""
    return f"model {versions.model_fingerprint or '?'}{release} · index {versions.index_version or '(none)'}"
