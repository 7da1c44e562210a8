"""Similar products: the catalogue products nearest to a catalogue product (by its productid), to a few words, or to
an uploaded image, optionally within one prdtypecode. The server searches its published index; this page only
shows the answer (thumbnail cards from the catalogue when one is configured)."""

from __future__ import annotations

import grpc
import streamlit as st

from shopclip.client import ShopclipRpcError
from shopclip.products import ProductInput
from shopclip.ui import session
from shopclip.ui.backends import Backends, Unavailable
from shopclip.ui.codes import CodeBook
from shopclip.ui.layout import section
from shopclip.ui.widgets import neighbours

BY_PRODUCT, BY_TEXT, BY_IMAGE = "A catalogue product", "Words", "An image"
MODES = (BY_PRODUCT, BY_TEXT, BY_IMAGE)
IMAGE_TYPES = ["jpg", "jpeg", "png", "webp"]
DEFAULT_TOP_K, MAX_TOP_K = 10, 50

Query = int | ProductInput  # a catalogue productid, or the content to search with
# (no bare strings at the top level of a page: Streamlit's magic would print them)


def render(backends: Backends) -> None:
    st.title("Similar products")
    mode = st.radio("Find catalogue products similar to", MODES, key="mode", horizontal=True)
    query = _query(mode)
    with section():
        book = backends.codebook()
        codes = backends.client().info().prdtypecodes
        left, right = st.columns(2)
        code = left.selectbox("Only products of code", [None, *codes], key="code",
                              format_func=lambda c: "any code" if c is None else book.label(c))
        top_k = right.slider("How many", 1, MAX_TOP_K, DEFAULT_TOP_K, key="top_k")
        if not st.button("Search", type="primary", key="search"):
            return
        if query is None:
            st.error(f"Give {mode.lower()} to search with.")
            return
        _search(backends, book, query, code, top_k)


def _query(mode: str) -> Query | None:
    """The input of the chosen mode, None while it is empty."""
    if mode == BY_PRODUCT:
        productid = st.number_input("Product id (productid)", min_value=0, step=1, value=None, key="productid")
        return None if productid is None else int(productid)
    if mode == BY_TEXT:
        text = st.text_input("Title or words", key="text").strip()
        return ProductInput(designation=text) if text else None
    upload = st.file_uploader("Image", type=IMAGE_TYPES, key="image")
    if upload is None:
        return None
    st.image(upload.getvalue(), width=160)
    return ProductInput(image=upload.getvalue())


def _search(backends: Backends, book: CodeBook, query: Query, code: int | None, top_k: int) -> None:
    within = "" if code is None else f" of code {book.label(code)}"
    try:
        if isinstance(query, int):
            result = backends.client().search(productid=query, top_k=top_k, prdtypecode=code)
        else:
            result = backends.client().search(query, top_k=top_k, prdtypecode=code)
    except ShopclipRpcError as error:
        if error.code != grpc.StatusCode.NOT_FOUND or not isinstance(query, int):
            raise
        # The index is what the server searches: a product ingested since the last publish is not there yet.
        st.warning(f"Product {query} is not in the published catalogue index: check the productid, or publish "
                   f"the index again if the product was added since ({error.details}).")
        return
    if isinstance(query, int):
        _describe(backends, book, query)
    subject = f"product {query}" if isinstance(query, int) else "the query"
    neighbours(result.neighbors, backends, f"The {len(result.neighbors)} catalogue products{within} closest to "
                                           f"{subject}, closest first · index {result.versions.index_version}")


def _describe(backends: Backends, book: CodeBook, productid: int) -> None:
    """The searched product's own title and code, when the console has the catalogue."""
    try:
        rows = backends.catalogue().products([productid]).select(["designation", "prdtypecode"]).to_pylist()
    except Unavailable:
        return
    if rows:
        st.markdown(f"Product {productid}: **{rows[0]['designation'] or '(no title)'}** · "
                    f"{book.label(rows[0]['prdtypecode'])}")


render(session.backends())
