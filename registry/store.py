"""The model registry: shopclip bundles as versions of one MLflow registered model, with aliases
`champion` (what serving resolves) and `challenger` (the newest candidate).

Serving resolves `models:/<name>@champion`, never a version number, so promotion and rollback are each one alias
move, separate from code deploys (mlflow docs, model-registry workflow). A version's source is where its bundle
lives (a folder or an s3:// URI): weights are not copied into MLflow's artifact store, the bundle is the artifact.

Who was champion before whom is recorded on the versions themselves: a promoted version's
`shopclip.previous_champion` tag names the one it replaced, so `rollback` walks that chain back one step at a
time, and every alias move appends an event (when, what, why) to the versions it touched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shopclip import settings
from shopclip.errors import InvalidInput, NotFound, ShopclipError
from shopclip.registry import lineage
from shopclip.registry.options import RegistryOptions

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
ALIASES = (CHAMPION, CHALLENGER)
MAX_TAG_CHARS = 5000
"""MLflow's SQL schema stores tag values as String(5000): SQLite ignores the length, PostgreSQL would refuse."""
KEEP_ALIAS_EVENTS = 20
"""Alias events kept per version (the newest), so the tag stays under MAX_TAG_CHARS."""
LAST_CHANGE = lineage.PREFIX + "last_alias_change"
"""Registered-model tag: the latest alias move, for a quick look at what changed last."""


@dataclass(frozen=True)
class ModelRecord:
    """One registered version, as the CLI and the serve/deploy side read it."""

    name: str
    version: str
    source: str
    """Where the bundle lives: a folder or an s3:// URI (what `shopclip serve --bundle` takes)."""
    created_ms: int
    aliases: tuple[str, ...] = ()
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def bundle_fingerprint(self) -> str:
        """The bundle's weights+architecture fingerprint: what an index manifest's model must match."""
        return self.tags.get(lineage.BUNDLE_FINGERPRINT, "")

    @property
    def bundle_release(self) -> str:
        """The weights and the classifier (`Embedder.release`): what a server answering with this version reports.
        "" for a version registered before releases were recorded."""
        return self.tags.get(lineage.BUNDLE_RELEASE, "")

    @property
    def data_fingerprint(self) -> str:
        return self.tags.get(lineage.DATA_FINGERPRINT, "")

    @property
    def parent_version(self) -> str | None:
        return self.tags.get(lineage.PARENT_VERSION) or None

    @property
    def previous_champion(self) -> str | None:
        return self.tags.get(lineage.PREVIOUS_CHAMPION) or None

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self.created_ms / 1000, tz=timezone.utc)

    @property
    def bundle_location(self) -> str:
        """Where to read the bundle from on this machine: the local copy it was registered from while it still
        exists, else the source."""
        local = self.tags.get(lineage.LOCAL_COPY)
        return local if local and Path(local).is_dir() else self.source

    @property
    def metrics(self) -> dict[str, Any]:
        return lineage.read_json(dict(self.tags), lineage.METRICS, {})

    @property
    def alias_events(self) -> list[dict[str, Any]]:
        return lineage.read_json(dict(self.tags), lineage.ALIAS_EVENTS, [])

    @property
    def gate_decisions(self) -> list[dict[str, Any]]:
        """Every gate decision recorded on this version, oldest first."""
        numbered = [(int(key[len(lineage.GATE_DECISION_PREFIX):]), key) for key in self.tags
                    if key.startswith(lineage.GATE_DECISION_PREFIX)
                    and key[len(lineage.GATE_DECISION_PREFIX):].isdigit()]
        return [lineage.read_json(dict(self.tags), key, {}) for _, key in sorted(numbered)]


def open_registry(options: RegistryOptions | None = None, *, create: bool = False) -> "Registry":
    """The registry `options` name (default: SHOPCLIP_REGISTRY_URI / SHOPCLIP_MODEL_NAME, else the defaults).

    Without `create`, a SQLite registry whose file does not exist is NotFound: a read (list, show, resolving the
    champion) must not leave an empty database behind a mistyped path."""
    options = options or settings.from_sources(RegistryOptions, {}, os.environ)
    database = options.sqlite_file
    if database is not None:
        if create:
            database.parent.mkdir(parents=True, exist_ok=True)
        elif not database.is_file():
            raise NotFound(f"registry {options.registry_uri}: no such database (nothing registered yet?)")
    return Registry(options, _client(options.store_uri))


def resolve_champion(options: RegistryOptions | None = None) -> ModelRecord:
    """The champion version (`.version`, `.source`: the bundle location to load, `.bundle_fingerprint`).
    NotFound when the registry, the model or the alias does not exist yet."""
    return open_registry(options).get(CHAMPION)


def local_bundle(location: str) -> str:
    """A local folder holding the bundle at `location`; an s3:// URI is downloaded once into the cache."""
    if "://" not in location:
        return location
    from shopclip.staging import resolve_bundle

    return resolve_bundle(location)


class Registry:
    """One registered model in one MLflow registry. Methods raise shopclip's domain errors, never MLflow's."""

    def __init__(self, options: RegistryOptions, client: "MlflowClient") -> None:
        self.options = options
        self.name = options.model_name
        self.client = client

    # -- reading --------------------------------------------------------------------------------------------

    def get(self, ref: str) -> ModelRecord:
        """A version by number, or the one an alias (`champion`, `@challenger`) points at."""
        ref = ref.strip().removeprefix("@")
        if ref in ALIASES:
            record = self.alias(ref)
            if record is None:
                raise NotFound(f"model {self.name!r} has no {ref} (versions: {self._version_span()})")
            return record
        if not ref.isdigit():
            raise InvalidInput("version", f"{ref!r} is neither a version number nor {' / '.join(ALIASES)}")
        self._model()
        try:
            with self._errors():
                return self._record(self.client.get_model_version(self.name, ref))
        except NotFound:
            raise NotFound(f"model {self.name!r} has no version {ref} (versions: {self._version_span()})") from None

    def alias(self, alias: str) -> ModelRecord | None:
        """The version `alias` points at, or None."""
        version = self._aliases().get(alias)
        if version is None:
            return None
        with self._errors():
            return self._record(self.client.get_model_version(self.name, version))

    def versions(self) -> list[ModelRecord]:
        """Every version, newest first (an empty list when nothing is registered)."""
        if not self._model_exists():
            return []
        aliases = self._aliases()
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(version, []).append(alias)
        with self._errors():
            found = self.client.search_model_versions(f"name = '{self.name}'", max_results=10_000)
        records = [self._record(version, tuple(sorted(by_version.get(str(version.version), []))))
                   for version in found]
        return sorted(records, key=lambda record: int(record.version), reverse=True)

    # -- writing --------------------------------------------------------------------------------------------

    def register(self, bundle: str, *, source: str | None = None, parent: str | None = None,
                 description: str = "") -> ModelRecord:
        """A new version for the bundle at `bundle` (a folder written by `shopclip train`, or an s3:// URI),
        carrying its lineage, and made the challenger. `source` is where the bundle lives for the servers when
        that is not `bundle` (an upload of it); `parent` defaults to the champion at this moment.

        Idempotent: the same bundle (release: weights and classifier) at the same location is the version it
        already is, aliases untouched, so a retried registration (a scheduler's task) never makes a second version;
        a bundle retrained in place, even one whose classifier alone changed, is a new version."""
        from shopclip.model.bundle import bundle_release, read_bundle_config  # torch: only registering reads one

        is_uri = "://" in bundle
        folder = local_bundle(bundle)
        config = read_bundle_config(folder)
        release = bundle_release(folder, config)
        location = source or (bundle if is_uri else str(Path(bundle).resolve()))
        local_copy = None if is_uri else str(Path(bundle).resolve())
        existing = self._registered(location, str(config.get("fingerprint", "")), release)
        if existing is not None:
            log.info("%s is already version %s of %s", location, existing.version, self.name)
            return existing
        parent = self.get(parent).version if parent else self._champion_version()
        tags = lineage.lineage_tags(config, release=release, local_copy=local_copy, parent=parent)
        self._ensure_model()
        with self._errors():
            created = self.client.create_model_version(self.name, source=location, tags=_checked(tags),
                                                       description=description or None)
            self.client.set_registered_model_alias(self.name, CHALLENGER, str(created.version))
        log.info("registered %s as version %s of %s (challenger)", location, created.version, self.name)
        return self.get(str(created.version))

    def _registered(self, location: str, fingerprint: str, release: str) -> ModelRecord | None:
        def same(record: ModelRecord) -> bool:  # a version registered before releases: its fingerprint says
            return record.bundle_release == release if record.bundle_release else \
                record.bundle_fingerprint == fingerprint

        return next((r for r in self.versions() if r.source == location and same(r)), None)

    def promote(self, version: str, *, event: str, reason: str) -> ModelRecord:
        """Point `champion` at `version` (which no longer is challenger). `event` says how (`promoted`,
        `forced`); the version it replaces is recorded as its previous champion, for rollback."""
        record = self.get(version)
        current = self.alias(CHAMPION)
        if current is not None and current.version == record.version:
            raise InvalidInput("version", f"version {record.version} is already the champion")
        if current is not None:
            self._set_tag(record.version, lineage.PREVIOUS_CHAMPION, current.version)
            self._add_event(current, {"event": "replaced", "by": record.version, "reason": reason})
        self._add_event(record, {"event": event, "replaced": current.version if current else None,
                                 "reason": reason})
        # The alias moves last: it is the one change serving sees, so a failure before it changes nothing live.
        self._move_champion(record.version, {"event": event, "version": record.version, "reason": reason})
        if CHALLENGER in record.aliases:
            with self._errors():
                self.client.delete_registered_model_alias(self.name, CHALLENGER)
        return self.get(record.version)

    def rollback(self, reason: str) -> tuple[ModelRecord, ModelRecord]:
        """Point `champion` back at the version the current champion replaced; returns (from, to)."""
        current = self.get(CHAMPION)
        if current.previous_champion is None:
            raise NotFound(f"version {current.version} replaced no earlier champion: nothing to roll back to")
        target = self.get(current.previous_champion)
        self._add_event(current, {"event": "rolled_back", "to": target.version, "reason": reason})
        self._add_event(target, {"event": "restored", "from": current.version, "reason": reason})
        self._move_champion(target.version, {"event": "rollback", "from": current.version,
                                             "version": target.version, "reason": reason})
        return self.get(current.version), self.get(target.version)

    def record_gate(self, version: str, decision: Mapping[str, Any]) -> None:
        """Keep a gate decision on the version: the full JSON under the next `shopclip.gate.<n>`, and its
        outcome (`passed`, `refused`, `forced`) under `shopclip.gate` for `list` and tag searches."""
        record = self.get(version)
        number = len(record.gate_decisions) + 1
        self._set_tag(record.version, f"{lineage.GATE_DECISION_PREFIX}{number}", lineage.compact_json(decision))
        self._set_tag(record.version, lineage.GATE, str(decision["decision"]))

    # -- MLflow plumbing ------------------------------------------------------------------------------------

    def _move_champion(self, version: str, change: dict[str, Any]) -> None:
        with self._errors():
            self.client.set_registered_model_alias(self.name, CHAMPION, version)
            self.client.set_registered_model_tag(self.name, LAST_CHANGE, lineage.compact_json(_stamped(change)))

    def _add_event(self, record: ModelRecord, event: dict[str, Any]) -> None:
        events = [*record.alias_events, _stamped(event)][-KEEP_ALIAS_EVENTS:]
        while len(lineage.compact_json(events)) > MAX_TAG_CHARS and len(events) > 1:
            events.pop(0)  # long reasons: keep fewer, newest last
        self._set_tag(record.version, lineage.ALIAS_EVENTS, lineage.compact_json(events))

    def _set_tag(self, version: str, key: str, value: str) -> None:
        with self._errors():
            self.client.set_model_version_tag(self.name, version, key, _checked({key: value})[key])

    def _champion_version(self) -> str | None:
        return self._aliases().get(CHAMPION) if self._model_exists() else None

    def _aliases(self) -> dict[str, str]:
        return {alias: str(version) for alias, version in self._model().aliases.items()}

    def _version_span(self) -> str:
        numbers = sorted(int(record.version) for record in self.versions())
        return f"{numbers[0]}..{numbers[-1]}" if numbers else "none"

    def _model(self) -> Any:
        """The registered model (MLflow's entity); NotFound, saying what to do, before the first registration."""
        try:
            with self._errors():
                return self.client.get_registered_model(self.name)
        except NotFound:
            raise NotFound(f"registry {self.options.registry_uri} holds no model {self.name!r} yet: "
                           "`shopclip model register BUNDLE` first") from None

    def _model_exists(self) -> bool:
        try:
            self._model()
        except NotFound:
            return False
        return True

    def _ensure_model(self) -> None:
        if self._model_exists():
            return
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(self.name, description="shopclip prdtypecode classifier bundles")
        except MlflowException as exc:  # another process created it first
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise _domain_error(exc, self.options.registry_uri) from exc

    def _record(self, version: "ModelVersion", aliases: tuple[str, ...] | None = None) -> ModelRecord:
        return ModelRecord(name=self.name, version=str(version.version), source=version.source or "",
                           created_ms=int(version.creation_timestamp or 0),
                           aliases=tuple(sorted(version.aliases)) if aliases is None else aliases,
                           description=version.description or "", tags=dict(version.tags or {}))

    @contextmanager
    def _errors(self) -> Iterator[None]:
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            raise _domain_error(exc, self.options.registry_uri) from exc


def _client(uri: str) -> "MlflowClient":
    # Offline by design: MLflow's usage telemetry would try to phone home from every command.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    if not logging.getLogger("shopclip").isEnabledFor(logging.DEBUG):
        # MLflow logs its schema migrations at INFO on its own handler; an operator wants the command's output.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as exc:  # an unsupported scheme or an unreachable database, raised by MLflow or SQLAlchemy
        raise ShopclipError(f"registry {uri}: cannot open it: {exc}") from exc


def _domain_error(exc: Exception, uri: str) -> ShopclipError:
    code, message = getattr(exc, "error_code", ""), getattr(exc, "message", str(exc))
    if code == "RESOURCE_DOES_NOT_EXIST":
        return NotFound(f"registry {uri}: {message}")
    if code == "INVALID_PARAMETER_VALUE":
        return InvalidInput("version", message)
    return ShopclipError(f"registry {uri}: {message}")


def _checked(tags: dict[str, str]) -> dict[str, str]:
    too_long = [key for key, value in tags.items() if len(value) > MAX_TAG_CHARS]
    if too_long:
        raise InvalidInput(too_long[0], f"tag value over {MAX_TAG_CHARS} characters (MLflow's limit)")
    return tags


def _stamped(event: dict[str, Any]) -> dict[str, Any]:
    return {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **event}
