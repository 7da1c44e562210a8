"""Classify: a product's title, description and image -> the server's ranked codes with their calibrated
probabilities, the abstain flag, and the catalogue neighbours that voted (thumbnails and titles)."""

from __future__ import annotations

import streamlit as st

from shopclip.products import ProductInput
from shopclip.ui import session
from shopclip.ui.backends import Backends
from shopclip.ui.layout import section
from shopclip.ui.widgets import neighbours, ranked_codes

IMAGE_TYPES = ["jpg", "jpeg", "png", "webp"]
TOP_K = 5


def render(backends: Backends) -> None:
    st.title("Classify a product")
    with st.form("classify"):
        designation = st.text_input("Title (designation)", key="designation")
        description = st.text_area("Description", key="description", height=100)
        upload = st.file_uploader("Image", type=IMAGE_TYPES, key="image")
        submitted = st.form_submit_button("Classify", type="primary")
    if not submitted:
        return
    product = ProductInput(designation=designation.strip(), description=description.strip(),
                           image=upload.getvalue() if upload is not None else None)
    if not product.designation and not product.description and product.image is None:
        st.error("Give a title, a description or an image.")
        return
    with section():
        if product.image is not None:
            st.image(product.image, width=160)
        result = backends.client().classify(product, top_k=TOP_K)
        ranked_codes(result, backends)
        neighbours(result.neighbors, backends, f"The {len(result.neighbors)} catalogue products that voted, "
                                               f"closest first")


render(session.backends())
