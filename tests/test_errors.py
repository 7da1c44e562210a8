"""One exit-status table for every command and the index job."""

from __future__ import annotations

from shopclip.errors import (Busy, DeadlineExpired, InvalidConfig, InvalidInput, NotFound, PublishRefused,
                             ShopclipError, exit_code)


def test_each_error_exits_with_its_own_status_and_subclasses_inherit_it() -> None:
    statuses = [exit_code(kind("x")) for kind in (NotFound, Busy, PublishRefused)]
    assert statuses == [3, 6, 7]
    assert exit_code(InvalidInput("field", "bad")) == exit_code(InvalidConfig("option", "bad")) == 2
    assert exit_code(DeadlineExpired("late")) == exit_code(ShopclipError("other")) == 1
    assert exit_code(Busy) == 6  # the class alone, for statuses decided before anything failed
