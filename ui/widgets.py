"""Renderers shared by the pages: ranked codes, neighbours with thumbnails, a product form."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from shopclip.client import ClassifyResult, Neighbor
from shopclip.ui.backends import Backends
from shopclip.ui.codes import CodeBook

THUMBNAILS_PER_ROW = 5
CARDS_SHOWN = 10


def ranked_codes(result: ClassifyResult, backends: Backends) -> None:
    book = backends.codebook()
    if result.abstain:
        st.warning(f"Abstains: top probability {result.predictions[0].probability:.0%} is below the server's "
                   f"threshold. Route this product to review.", icon=":material/help:")
    else:
        st.success(f"prdtypecode **{book.label(result.code)}** with probability "
                   f"{result.predictions[0].probability:.0%}", icon=":material/check_circle:")
    st.dataframe([{"rank": rank, "prdtypecode": p.code, "code": book.label(p.code), "probability": p.probability}
                  for rank, p in enumerate(result.predictions, 1)],
                 hide_index=True, column_config={"probability": st.column_config.ProgressColumn(
                     "probability", min_value=0.0, max_value=1.0, format="percent")})
    st.caption(f"model {result.versions.model_fingerprint} · index {result.versions.index_version or '(none)'} · "
               f"request {result.request_id}")


def neighbours(found: Sequence[Neighbor], backends: Backends, caption: str) -> None:
    """Catalogue products as cards: thumbnail (when the catalogue holds its image), title, code, similarity."""
    if not found:
        st.info("No catalogue product to show.")
        return
    st.caption(caption)
    book = backends.codebook()
    images = backends.image_files([n.productid for n in found])
    _cards(found[:CARDS_SHOWN], book, images)
    if len(found) > CARDS_SHOWN:  # a bundle's tuned k can be dozens of voters
        with st.expander(f"{len(found) - CARDS_SHOWN} more"):
            _cards(found[CARDS_SHOWN:], book, images)


def _cards(found: Sequence[Neighbor], book: CodeBook, images: dict) -> None:
    for start in range(0, len(found), THUMBNAILS_PER_ROW):
        for column, neighbour in zip(st.columns(THUMBNAILS_PER_ROW), found[start:start + THUMBNAILS_PER_ROW]):
            with column.container(border=True):
                if neighbour.productid in images:
                    st.image(str(images[neighbour.productid]), width="stretch")
                st.markdown(f"**{neighbour.designation or '(no title: image only)'}**")
                st.caption(f"{book.label(neighbour.prdtypecode)} · similarity {neighbour.similarity:.3f} · "
                           f"product {neighbour.productid}")
