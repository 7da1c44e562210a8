"""Shared page pieces: a section that shows `Unavailable` (and other shopclip errors) as a plain sentence where its
content would be, and the small renderers every page uses (codes with their names, product thumbnails)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from shopclip.client import ShopclipRpcError
from shopclip.errors import ShopclipError
from shopclip.ui.backends import Unavailable


@contextmanager
def section(title: str | None = None) -> Iterator[None]:
    """A page part whose back end may be missing: `Unavailable` shows as an info box, a failed call or another
    domain error as an error box naming it; the rest of the page still renders."""
    if title:
        st.subheader(title)
    try:
        yield
    except Unavailable as missing:
        st.info(str(missing))
    except ShopclipRpcError as error:
        st.error(f"The server refused: {error.code.name}: {error.details}")
    except ShopclipError as error:
        st.error(str(error))
