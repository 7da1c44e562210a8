"""One interface over object-store URIs (`s3://bucket/prefix`) and local paths.

Drops, training data and model bundles live in an object store in production (MinIO in docker-compose, S3 or any
S3-compatible service elsewhere) and on local disk in development; every command takes either spelling. The
store is read and written with plain S3 calls only (list, get, put, head, multipart upload through boto3's
transfer manager): no vendor admin or notification API, so new drops are found by listing and comparing a
`signature` of what a prefix holds (keys, sizes, ETags).

Where the store is: `StoreOptions` (flags `--s3-endpoint`, `--s3-region`, `--s3-profile`, each also a SHOPCLIP_*
variable), else the usual AWS variables (AWS_ENDPOINT_URL[_S3], AWS_REGION / AWS_DEFAULT_REGION, AWS_PROFILE,
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN), else boto3's own chain (shared config files).
Failures become shopclip.errors domain errors whose one line names the URI: a missing bucket or key NotFound,
a refused or absent credential AccessDenied, an unreachable endpoint NotReady; never a boto traceback.

Neutral: no grpc, no torch; boto3 is imported on the first s3:// call, so local paths need none of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from shopclip.atomic import replace_atomically, write_bytes_atomically, write_json_atomically
from shopclip.errors import AccessDenied, InvalidInput, NotFound, NotReady, ShopclipError
from shopclip.settings import option

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"
MIRROR_MANIFEST = ".shopclip-mirror.json"
"""Written by `download` into the folder it fills: key -> ETag of each file it fetched, so the next download of
the same prefix fetches only what changed and removes only files it had itself brought (never a user's)."""
CHUNK_BYTES = 1 << 20


def is_s3(uri: str | os.PathLike) -> bool:
    return isinstance(uri, str) and uri.startswith(S3_SCHEME)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/shopclip, else ~/.cache/shopclip (read when options are built, not at import)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shopclip"


@dataclass(frozen=True)
class StoreOptions:
    """Where the object store is and how to reach it. Options left unset fall back to the AWS variables, then to
    boto3's chain. Credentials have no flag (a flag shows in `ps`): AWS_* variables, a profile, or these fields
    for callers of the API."""

    s3_endpoint: str | None = option(None, "S3 endpoint URL (MinIO, SeaweedFS, ...); unset: AWS_ENDPOINT_URL_S3, "
                                           "AWS_ENDPOINT_URL, else AWS itself")
    s3_region: str | None = option(None, "S3 region; unset: AWS_REGION, AWS_DEFAULT_REGION, the profile's")
    s3_profile: str | None = option(None, "profile of the AWS shared config and credentials files; unset: "
                                          "AWS_PROFILE")
    s3_attempts: int = option(3, "attempts per S3 call (retried with backoff on throttling and dropped "
                                 "connections)")
    store_cache: Path = option(default_factory=default_cache_dir,
                               help="local cache of what s3:// URIs hold: model bundles (one folder per content "
                                    "signature), staged training data and drops, training output before upload")
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.s3_attempts < 1:
            raise InvalidInput("s3_attempts", f"must be >= 1, got {self.s3_attempts}")


_configured: StoreOptions | None = None


def configure(options: StoreOptions | None) -> None:
    """Set the process's options (the CLI does, from its flags); None goes back to reading the environment."""
    global _configured
    _configured = options


def current_options(env: Mapping[str, str] | None = None) -> StoreOptions:
    """The configured options, else SHOPCLIP_* variables and defaults, read now (tests change the environment)."""
    if _configured is not None:
        return _configured
    return options_from({}, os.environ if env is None else env)


def add_arguments(parser: Any) -> None:
    """The store's flags, in their own group, for every command that takes an s3:// URI; `shopclip.cli.main`
    reads them (with their variables) into `configure` before the command runs."""
    from shopclip import settings

    settings.add_arguments(parser.add_argument_group("object store (s3:// URIs; AWS_* variables also apply)"),
                           StoreOptions)


def options_from(flags: Any, env: Mapping[str, str]) -> StoreOptions:
    from shopclip import settings

    return settings.from_sources(StoreOptions, flags, env)


# ---------------------------------------------------------------- locations and listings


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str
    """Without a leading slash; a prefix may end with '/'."""

    @classmethod
    def parse(cls, uri: str) -> "S3Location":
        bucket, _, key = uri[len(S3_SCHEME):].partition("/")
        if not bucket:
            raise InvalidInput("uri", f"{uri!r} names no bucket: expected s3://bucket/prefix")
        return cls(bucket, key)

    @property
    def prefix(self) -> str:
        """The key as a folder: 'drops/a/' (so listing 'drops/a' never takes 'drops/ab'), '' for the bucket."""
        return self.key if not self.key or self.key.endswith("/") else self.key + "/"

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    """Relative to the listed prefix, '/'-separated ('images/image_1_product_2.jpg')."""
    size: int
    etag: str
    """The store's ETag; for a local file its modification time (what changes when the content is replaced)."""


def join(uri: str, *parts: str) -> str:
    """`uri` / parts, for s3:// URIs and local paths alike."""
    if is_s3(uri):
        return "/".join([uri.rstrip("/"), *(part.strip("/") for part in parts)])
    return str(Path(uri, *parts))


def name_of(uri: str) -> str:
    """Last segment of a URI or path ('2026-11' of 's3://b/drops/2026-11/')."""
    return PurePosixPath(uri.rstrip("/")).name if is_s3(uri) else Path(uri).resolve().name


def signature(objects: Iterable[ObjectInfo]) -> str:
    """Changes when any object under a prefix is added, removed or replaced (keys, sizes and ETags)."""
    hasher = hashlib.blake2b(digest_size=16)
    for item in sorted(objects, key=lambda info: info.key):
        hasher.update(f"{item.key}\t{item.size}\t{item.etag}\n".encode("utf-8", "surrogatepass"))
    return hasher.hexdigest()


def safe_relative(key: str, where: str) -> PurePosixPath:
    """A listed key as a path below the destination folder; a key that would climb out ('..', absolute) is
    refused rather than written elsewhere on disk."""
    relative = PurePosixPath(key)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise InvalidInput("key", f"{where}: refusing object key {key!r} (not a path below the prefix)")
    return relative


# ---------------------------------------------------------------- backends


class _Backend(Protocol):
    def list(self, uri: str) -> list[ObjectInfo]: ...
    def folders(self, uri: str) -> list[str]: ...
    def read(self, uri: str) -> bytes: ...
    def write(self, uri: str, data: bytes) -> None: ...
    def exists(self, uri: str) -> bool: ...
    def fetch(self, uri: str, item: ObjectInfo, target: Path) -> None: ...
    def put(self, source: Path, uri: str) -> None: ...


class _LocalBackend:
    """Plain files. Writes are atomic (shopclip.atomic): a reader sees the old file or the new one."""

    def list(self, uri: str) -> list[ObjectInfo]:
        root = Path(uri)
        if not root.is_dir():
            return []
        found = []
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MIRROR_MANIFEST):
            stat = path.stat()
            found.append(ObjectInfo(path.relative_to(root).as_posix(), stat.st_size, str(stat.st_mtime_ns)))
        return found

    def folders(self, uri: str) -> list[str]:
        root = Path(uri)
        if not root.is_dir():
            raise NotFound(f"{uri}: no such directory")
        return sorted(str(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def read(self, uri: str) -> bytes:
        try:
            return Path(uri).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"{uri}: no such file") from None

    def write(self, uri: str, data: bytes) -> None:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(uri, data)

    def exists(self, uri: str) -> bool:
        return Path(uri).exists()

    def fetch(self, uri: str, item: ObjectInfo, target: Path) -> None:
        with replace_atomically(target) as temporary:
            shutil.copyfile(Path(uri, item.key), temporary)

    def put(self, source: Path, uri: str) -> None:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        with replace_atomically(uri) as temporary:
            shutil.copyfile(source, temporary)


_MISSING = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
_REFUSED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
            "TokenRefreshRequired", "403"}
_CHANGED = {"PreconditionFailed", "412"}


class _S3Backend:
    """boto3 behind one client per resolved configuration; every call goes through `_translated`."""

    def __init__(self, options: StoreOptions, env: Mapping[str, str]) -> None:
        self.endpoint = options.s3_endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        self.region = options.s3_region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
        self.options = options
        self.environment = tuple(env.get(name) for name in _CLIENT_VARIABLES)

    @property
    def where(self) -> str:
        return self.endpoint or "AWS S3"

    def list(self, uri: str) -> list[ObjectInfo]:
        location = S3Location.parse(uri)
        found = []
        for page in self._pages(uri, Bucket=location.bucket, Prefix=location.prefix):
            for item in page.get("Contents", ()):
                relative = item["Key"][len(location.prefix):]
                if relative and not relative.endswith("/"):  # 'folder/' markers some consoles create hold nothing
                    found.append(ObjectInfo(relative, int(item["Size"]), str(item.get("ETag", "")).strip('"')))
        return found

    def folders(self, uri: str) -> list[str]:
        location = S3Location.parse(uri)
        names = []
        for page in self._pages(uri, Bucket=location.bucket, Prefix=location.prefix, Delimiter="/"):
            names += [entry["Prefix"] for entry in page.get("CommonPrefixes", ())]
        return sorted(str(S3Location(location.bucket, name)) for name in names)

    def read(self, uri: str) -> bytes:
        location = S3Location.parse(uri)
        with self._translated(uri):
            return self.client().get_object(Bucket=location.bucket, Key=location.key)["Body"].read()

    def write(self, uri: str, data: bytes) -> None:
        location = S3Location.parse(uri)
        with self._translated(uri):
            self.client().put_object(Bucket=location.bucket, Key=location.key, Body=data)

    def exists(self, uri: str) -> bool:
        """An object at that key, or anything under it as a prefix."""
        from botocore.exceptions import ClientError

        location = S3Location.parse(uri)
        with self._translated(uri):
            try:
                if location.key and not location.key.endswith("/"):
                    self.client().head_object(Bucket=location.bucket, Key=location.key)
                    return True
            except ClientError as exc:
                if _error_code(exc) not in _MISSING:
                    raise
            answer = self.client().list_objects_v2(Bucket=location.bucket, Prefix=location.prefix, MaxKeys=1)
            return bool(answer.get("KeyCount") or answer.get("Contents"))

    def fetch(self, uri: str, item: ObjectInfo, target: Path) -> None:
        """Stream one object to `target` (atomically), only if it still has the listed ETag: a drop replaced
        while it is being downloaded fails instead of mixing two versions under one signature."""
        location = S3Location.parse(join(uri, item.key))
        extra = {"IfMatch": f'"{item.etag}"'} if item.etag else {}
        with self._translated(str(location)), replace_atomically(target) as temporary:
            body = self.client().get_object(Bucket=location.bucket, Key=location.key, **extra)["Body"]
            with temporary.open("wb") as out:
                shutil.copyfileobj(body, out, CHUNK_BYTES)

    def put(self, source: Path, uri: str) -> None:
        location = S3Location.parse(uri)
        with self._translated(uri):  # the transfer manager switches to multipart above 8 MiB (plain S3 too)
            self.client().upload_file(str(source), location.bucket, location.key)

    def _pages(self, uri: str, **request: Any) -> Iterator[dict]:
        with self._translated(uri):
            yield from self.client().get_paginator("list_objects_v2").paginate(**request)

    def client(self) -> Any:
        return _client(self.endpoint, self.region, self.options, self.environment)

    @contextmanager
    def _translated(self, uri: str) -> Iterator[None]:
        try:
            yield
        except ShopclipError:
            raise
        except Exception as exc:
            domain = _domain_error(exc, uri, self.where)
            if domain is None:
                raise
            raise domain from None


def _error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code") or exc.response.get("ResponseMetadata", {})
               .get("HTTPStatusCode", ""))


def _domain_error(exc: Exception, uri: str, where: str) -> ShopclipError | None:
    """The domain error for a boto failure on `uri` (one line, naming it), or None for anything else (a bug)."""
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as boto

    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, boto.ClientError):
        exc = exc.__context__  # the transfer manager re-raises the S3 answer as text: translate the answer
    if isinstance(exc, boto.ClientError):
        return _client_error(exc, uri)
    if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError, boto.CredentialRetrievalError)):
        return AccessDenied(f"{uri}: no usable S3 credentials ({exc}); set AWS_ACCESS_KEY_ID and "
                            f"AWS_SECRET_ACCESS_KEY, or --s3-profile")
    if isinstance(exc, boto.ProfileNotFound):
        return InvalidInput("s3_profile", f"{exc} (needed for {uri})")
    if isinstance(exc, (boto.ConnectionError, boto.HTTPClientError)):
        return NotReady(f"{uri}: cannot reach the object store at {where} ({exc})")
    if isinstance(exc, boto.BotoCoreError):
        return ShopclipError(f"{uri}: {exc}")
    return None


def _client_error(exc: Any, uri: str) -> ShopclipError:
    code = _error_code(exc)
    message = " ".join(str(exc.response.get("Error", {}).get("Message") or code).split())
    if code == "NoSuchBucket":
        return NotFound(f"{uri}: no such bucket ({message})")
    if code in _MISSING:
        return NotFound(f"{uri}: no such object")
    if code in _REFUSED:
        return AccessDenied(f"{uri}: the object store refused the request ({code}: {message}); check "
                            f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or --s3-profile")
    if code in _CHANGED:
        return NotReady(f"{uri}: changed while it was being read; try again")
    return ShopclipError(f"{uri}: the object store answered {code}: {message}")


_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()
_CLIENT_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                     "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
"""What boto3 reads from the environment when it makes a client: part of the cache key, so a client made
before a variable changed is not used after it."""


def _client(endpoint: str | None, region: str | None, options: StoreOptions, environment: tuple) -> Any:
    """One boto3 client per configuration (clients are thread-safe, sessions are not); ProfileNotFound and a
    missing boto3 surface on the first call that needs the store."""
    key = (endpoint, region, options.s3_profile, options.s3_attempts, options.access_key_id,
           options.secret_access_key, options.session_token, environment)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = _new_client(endpoint, region, options)
        return _clients[key]


def _new_client(endpoint: str | None, region: str | None, options: StoreOptions) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ShopclipError("s3:// URIs need boto3: pip install 'shopclip[s3]'") from None
    session = boto3.session.Session(profile_name=options.s3_profile, region_name=region,
                                    aws_access_key_id=options.access_key_id,
                                    aws_secret_access_key=options.secret_access_key,
                                    aws_session_token=options.session_token)
    # Path-style addressing for a custom endpoint: MinIO and SeaweedFS on an IP or a compose host name have no
    # per-bucket DNS names.
    config = Config(retries={"max_attempts": options.s3_attempts, "mode": "standard"}, connect_timeout=5,
                    read_timeout=60, s3={"addressing_style": "path"} if endpoint else None)
    return session.client("s3", endpoint_url=endpoint, config=config)


# ---------------------------------------------------------------- the store


@dataclass(frozen=True)
class Mirrored:
    """What `download` did: files the folder now holds, how many it fetched, and the prefix's signature."""

    folder: Path
    files: int
    fetched: int
    bytes_fetched: int
    signature: str


class ObjectStore:
    """Every operation takes an s3:// URI or a local path; `options` and `env` say where S3 is."""

    def __init__(self, options: StoreOptions | None = None, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.options = options or current_options(env)
        self._local = _LocalBackend()
        self._s3 = _S3Backend(self.options, env)

    def _backend(self, uri: str | os.PathLike) -> _Backend:
        return self._s3 if is_s3(uri) else self._local

    def list(self, uri: str | os.PathLike) -> list[ObjectInfo]:
        """Every object (file) under a prefix (folder), keys relative to it; [] when there is none."""
        return self._backend(uri).list(str(uri))

    def folders(self, uri: str | os.PathLike) -> list[str]:
        """The immediate 'folders' under a prefix (S3 common prefixes, local subdirectories) as URIs/paths."""
        return self._backend(uri).folders(str(uri))

    def read_bytes(self, uri: str | os.PathLike) -> bytes:
        return self._backend(uri).read(str(uri))

    def write_bytes(self, uri: str | os.PathLike, data: bytes) -> None:
        self._backend(uri).write(str(uri), data)

    def exists(self, uri: str | os.PathLike) -> bool:
        return self._backend(uri).exists(str(uri))

    def signature(self, uri: str | os.PathLike) -> str:
        return signature(self.list(uri))

    def put_file(self, source: str | os.PathLike, uri: str | os.PathLike) -> None:
        """One local file to a key or path."""
        self._backend(uri).put(Path(source), str(uri))

    def download(self, uri: str | os.PathLike, folder: str | os.PathLike,
                 keep: Callable[[str], bool] = lambda key: True,
                 objects: list[ObjectInfo] | None = None) -> Mirrored:
        """Mirror the objects under `uri` for which `keep(key)` holds into `folder`. Only objects new or changed
        since the last mirror are fetched; files a previous mirror brought that are gone from the store are
        removed. Each file is written atomically. `objects` is a listing already made (with its signature)."""
        uri, target = str(uri), Path(folder)
        listed = [item for item in (self.list(uri) if objects is None else objects) if keep(item.key)]
        if not listed and not self.exists(uri):
            raise NotFound(f"{uri}: nothing there to download")
        target.mkdir(parents=True, exist_ok=True)
        previous = _read_mirror_manifest(target)
        fetched = [item for item in listed if _stale(target, item, previous, uri)]
        for item in fetched:
            destination = target / safe_relative(item.key, uri)
            destination.parent.mkdir(parents=True, exist_ok=True)
            self._backend(uri).fetch(uri, item, destination)
        _remove_vanished(target, previous, {item.key for item in listed})
        write_json_atomically(target / MIRROR_MANIFEST, {item.key: item.etag for item in listed}, sort_keys=True)
        return Mirrored(target, len(listed), len(fetched), sum(item.size for item in fetched), signature(listed))

    def upload(self, folder: str | os.PathLike, uri: str | os.PathLike, skip: Iterable[str] = (),
               last: Iterable[str] = ()) -> int:
        """Every file under `folder` to `uri`/<relative path>, except the relative paths in `skip`; those in
        `last` go after the others (a bundle's config.json: whoever sees it sees a complete bundle). Returns
        the number of files uploaded."""
        root, uri = Path(folder), str(uri)
        skipped, tail = set(skip), list(last)
        files = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*"))
                 if p.is_file() and p.name != MIRROR_MANIFEST]
        files = [name for name in files if name not in skipped]
        ordered = [name for name in files if name not in tail] + [name for name in tail if name in files]
        for name in ordered:
            self.put_file(root / name, join(uri, name))
        return len(ordered)


def _read_mirror_manifest(folder: Path) -> dict[str, str]:
    try:
        return json.loads((folder / MIRROR_MANIFEST).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}


def _stale(folder: Path, item: ObjectInfo, previous: Mapping[str, str], uri: str) -> bool:
    local = folder / safe_relative(item.key, uri)
    return previous.get(item.key) != item.etag or not local.is_file() or local.stat().st_size != item.size


def _remove_vanished(folder: Path, previous: Mapping[str, str], listed: set[str]) -> None:
    for key in set(previous) - listed:
        (folder / safe_relative(key, str(folder / MIRROR_MANIFEST))).unlink(missing_ok=True)
