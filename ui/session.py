"""One `Backends` per console process and sign-in (Streamlit reruns a page's script on every interaction: the
connections must outlive a run), and the sign-in with the server's token when the server requires one."""

from __future__ import annotations

from dataclasses import replace

import grpc
import streamlit as st

from shopclip.client import ShopclipRpcError
from shopclip.ui.backends import Backends
from shopclip.ui.config import UiConfig

TOKEN_KEY = "shopclip_token"


@st.cache_resource(show_spinner=False)
def _backends(config: UiConfig) -> Backends:
    return Backends(config)


def backends() -> Backends:
    """The back ends of this session: the process's configuration, with the token this session signed in with."""
    config = UiConfig.from_environment()
    token = st.session_state.get(TOKEN_KEY)
    return _backends(config if token is None else replace(config, token=token))


def signed_in(current: Backends) -> bool:
    """False while the server wants a token this session has not given (then `sign_in` is the only page). A
    server that does not answer is only a warning: the pages that need it say so, the others still work."""
    try:
        current.client().info(timeout=5)
        return True
    except ShopclipRpcError as error:
        if error.code == grpc.StatusCode.UNAUTHENTICATED:
            return False
        st.warning(f"The shopclip server at {current.config.target} does not answer ({error.code.name}): "
                   f"classification and search are unavailable until it does.")
        return True


def sign_in() -> None:
    """The sign-in page: the server's token, kept in this browser session only."""
    current = backends()
    st.title("Sign in")
    st.caption(f"The server at {current.config.target} requires its access token.")
    with st.form("sign-in"):
        token = st.text_input("Token", type="password")
        if st.form_submit_button("Sign in") and token:
            st.session_state[TOKEN_KEY] = token
            st.rerun()
    if st.session_state.get(TOKEN_KEY):
        st.error("That token was refused by the server.")
