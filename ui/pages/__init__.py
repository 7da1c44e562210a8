"""The console's pages: each a Streamlit script rendering from `shopclip.ui.session.backends()`."""
