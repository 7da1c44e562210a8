"""The console's entry script (`shopclip ui` runs it with `streamlit run`): page setup, sign-in, navigation.

Each page is a script under pages/ that renders from `shopclip.ui.session.backends()`, so a page also runs on its
own (Streamlit's AppTest runs them one by one)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from shopclip.ui import session

PAGES = Path(__file__).resolve().parent / "pages"
NAVIGATION = {
    "Products": [("classify.py", "Classify", ":material/category:"),
                 ("similar.py", "Similar products", ":material/image_search:"),
                 ("review.py", "Review queue", ":material/fact_check:")],
    "Operations": [("catalogue.py", "Catalogue and drops", ":material/inventory_2:"),
                   ("models.py", "Models", ":material/model_training:"),
                   ("monitoring.py", "Monitoring", ":material/monitoring:")],
}


def main() -> None:
    st.set_page_config(page_title="shopclip console", page_icon=":material/storefront:", layout="wide")
    current = session.backends()
    with st.sidebar:
        st.caption(f"server {current.config.target}")
    if session.signed_in(current):
        pages = {group: [st.Page(str(PAGES / name), title=title, icon=icon) for name, title, icon in entries]
                 for group, entries in NAVIGATION.items()}
    else:  # navigation is always declared: without it Streamlit would list the files of pages/ itself
        pages = {"": [st.Page(session.sign_in, title="Sign in", icon=":material/lock:", url_path="sign-in")]}
    st.navigation(pages).run()


main()
