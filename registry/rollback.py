"""Rolling the champion back one step, with the index it needs: the one decision `shopclip model rollback` and
the admin console both make.

A server that follows models serves the champion's bundle with an index its model built. Moving the alias alone
would leave servers on an index of the wrong model, so with an index root the rollback also makes live the newest
kept index version built by the restored champion, and refuses (NotFound, nothing moved) before touching the
registry when there is none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shopclip.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from shopclip.registry.store import ModelRecord, Registry


@dataclass(frozen=True)
class RollbackResult:
    left: "ModelRecord"
    """The version that was champion, as it is after the rollback (its `rolled_back` event recorded)."""
    restored: "ModelRecord"
    """The version that is champion again."""
    index_version: str | None = None
    """The index version made live under the index root; None when no index root was given."""

    def summary(self) -> str:
        """One line for a terminal or a console banner."""
        line = f"champion rolled back from version {self.left.version} to version {self.restored.version}"
        if self.index_version is not None:
            line += f"; index {self.index_version} (built with version {self.restored.version}) is live"
        return line


def rollback(registry: "Registry", reason: str, index_root: str | Path | None = None) -> RollbackResult:
    """Point `champion` back at the version the current champion replaced, recording `reason` on both; with
    `index_root`, also activate the newest kept index version built by the restored model.

    InvalidInput for an empty reason; NotFound, with nothing moved, when there is no previous champion or (with
    `index_root`) no kept index version of its model."""
    if not reason.strip():
        raise InvalidInput("reason", "must say why the champion is rolled back (it is recorded on both versions)")
    # Every check before the alias moves: a refused rollback changes neither the registry nor the index root.
    index_version = rollback_index(registry, str(index_root)) if index_root is not None else None
    left, restored = registry.rollback(reason)
    if index_version is not None:
        from shopclip.indexer import publish

        publish.activate_version(index_root, index_version)
    return RollbackResult(left, restored, index_version)


def rollback_target(registry: "Registry") -> "ModelRecord":
    """The version a rollback would make champion (what a console shows before asking to confirm). NotFound
    when there is no champion, or when it replaced no earlier one."""
    current = registry.get("champion")
    if current.previous_champion is None:
        raise NotFound(f"version {current.version} replaced no earlier champion: nothing to roll back to")
    return registry.get(current.previous_champion)


def rollback_index(registry: "Registry", index_root: str) -> str:
    """The kept index version a rollback makes live: the newest one built by the previous champion's model.
    NotFound (and nothing moved) when there is none, or no previous champion."""
    from shopclip.indexer import publish

    restored = rollback_target(registry)
    version = publish.newest_version_built_by(index_root, restored.bundle_fingerprint, restored.bundle_release)
    if version is None:
        raise NotFound(f"index root {index_root}: no kept version was built with version {restored.version} "
                       f"(model {restored.bundle_fingerprint}); build one first: shopclip index build --bundle "
                       f"{restored.bundle_location} --index-root {index_root} ...")
    return version
