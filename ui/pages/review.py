"""Review queue: the answers the server abstained on or gave with low confidence, read from the prediction log, for
a person to accept (the predicted code is right) or correct, one by one or several at once.

Every decision goes to the server's feedback RPC through the client, exactly as the shop backend sends its own:
the server validates the code and stores the row, and the drop pipeline later writes it into the catalogue. The
page never writes to the log itself. A reviewed answer leaves the queue (predlog.queries.review_queue)."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st
from sqlalchemy.engine import Engine

from shopclip.client import ShopclipRpcError
from shopclip.predlog.queries import DEFAULT_MAX_PROBABILITY, ORDERS, ReviewItem, recent_feedback, review_queue
from shopclip.ui import session
from shopclip.ui.backends import Backends
from shopclip.ui.codes import CodeBook
from shopclip.ui.layout import section

ACTOR = "console"
ORDER_LABELS = {"recent": "Most recent first", "least_confident": "Least confident first"}
NOTICE_KEY = "review_notice"
# Bumped after each action: the table's selection and the pickers are keyed by it, so they start fresh on the new
# queue instead of pointing at rows that have left it. (No bare strings at a page's top level: Streamlit's magic
# would print them.)
ROUND_KEY = "review_round"
DEFAULT_ROWS, MAX_ROWS, RECENT_ROWS = 50, 500, 20

Decision = tuple[ReviewItem, int]  # an answer and the code the reviewer gives it


def render(backends: Backends) -> None:
    st.title("Review queue")
    st.caption("Answers the server abstained on or gave with low confidence, not yet confirmed or corrected.")
    _show_notice()
    with section():
        store = backends.prediction_log()
        order, max_probability, limit = _filters()
        items = review_queue(store.engine, limit=limit, order=order, max_probability=max_probability)
        book = backends.codebook()
        if items:
            selected = _table(items, book)
            with section():  # the server may be down: the queue still shows, the actions say why they cannot run
                codes = tuple(backends.client().info().prdtypecodes)
                _one_by_one(backends, book, items, codes)
                _in_bulk(backends, book, selected, codes)
        else:
            st.info("Nothing to review: every abstained or low-confidence answer has been confirmed or corrected.")
        _recently_reviewed(store.engine, book)


def _filters() -> tuple[str, float, int]:
    order_column, probability_column, rows_column = st.columns(3)
    order = order_column.selectbox("Order", ORDERS, format_func=ORDER_LABELS.__getitem__, key="order")
    max_probability = probability_column.slider("Confidence below", 0.0, 1.0, DEFAULT_MAX_PROBABILITY, 0.05,
                                                key="max_probability", help="Abstained answers are always listed.")
    limit = rows_column.number_input("Rows", 1, MAX_ROWS, DEFAULT_ROWS, key="limit")
    return order, max_probability, int(limit)


def _table(items: Sequence[ReviewItem], book: CodeBook) -> list[ReviewItem]:
    """The queue as a table whose selected rows the bulk actions apply to; returns the selected items."""
    rows = [{"time": item.created_at, "title": item.designation or "(no title)", "productid": item.productid,
             "predicted": book.label(item.top_code), "probability": item.top_probability,
             "runner-up": book.label(item.ranked[1][0]) if len(item.ranked) > 1 else "-",
             "abstain": item.abstain, "model": item.model_fingerprint, "release": item.model_release}
            for item in items]
    event = st.dataframe(rows, key=f"queue_{_round()}", on_select="rerun", selection_mode="multi-row",
                         hide_index=True, column_config={
                             "time": st.column_config.DatetimeColumn("time", format="YYYY-MM-DD HH:mm:ss"),
                             "productid": st.column_config.NumberColumn("productid", format="%d"),
                             "probability": st.column_config.ProgressColumn(
                                 "probability", min_value=0.0, max_value=1.0, format="percent")})
    return [items[row] for row in event.selection.rows if row < len(items)]


def _one_by_one(backends: Backends, book: CodeBook, items: Sequence[ReviewItem], codes: Sequence[int]) -> None:
    st.subheader("One by one")
    index = st.selectbox("Product", range(len(items)), key=f"item_{_round()}",
                         format_func=lambda i: _describe(items[i], book))
    item = items[index]
    accept_column, code_column, correct_column = st.columns([1, 2, 1], vertical_alignment="bottom")
    if accept_column.button("Accept", key="accept_one", type="primary", disabled=item.top_code is None,
                            help="The predicted code is right"):
        _send(backends, [(item, item.top_code)])
    code = code_column.selectbox("Correct code", codes, index=_suggestion(item, codes), format_func=book.label,
                                 key=f"correct_code_{item.request_id}")
    if correct_column.button("Correct", key="correct_one"):
        _send(backends, [(item, code)])


def _in_bulk(backends: Backends, book: CodeBook, selected: Sequence[ReviewItem], codes: Sequence[int]) -> None:
    st.subheader("Selected rows")
    st.caption(f"{len(selected)} selected in the table above." if selected else
               "Select rows in the table above to accept them or give them one code together.")
    accept_column, code_column, set_column = st.columns([1, 2, 1], vertical_alignment="bottom")
    if accept_column.button("Accept selected", key="accept_selected", disabled=not selected):
        _send(backends, [(item, item.top_code) for item in selected if item.top_code is not None])
    code = code_column.selectbox("Code for the selected", codes, format_func=book.label, key=f"bulk_code_{_round()}")
    if set_column.button("Set selected to this code", key="set_selected", disabled=not selected):
        _send(backends, [(item, code) for item in selected])


def _send(backends: Backends, decisions: Sequence[Decision]) -> None:
    """Sends each decision as feedback; stores what happened for the next run, then reruns on the new queue."""
    client = backends.client()
    confirmed = corrected = 0
    failures: list[str] = []
    for item, code in decisions:
        try:
            receipt = client.feedback(int(code), request_id=item.request_id, productid=item.productid, actor=ACTOR)
        except ShopclipRpcError as error:  # one refused row must not lose the others' decisions
            failures.append(f"{item.designation or item.request_id}: {error.code.name}: {error.details}")
            continue
        confirmed, corrected = (confirmed + 1, corrected) if receipt.was_correct else (confirmed, corrected + 1)
    stored = confirmed + corrected
    st.session_state[NOTICE_KEY] = (f"Stored {stored} review{'s' if stored != 1 else ''} ({confirmed} accepted, "
                                    f"{corrected} corrected).", failures)
    st.session_state[ROUND_KEY] = _round() + 1
    st.rerun()


def _show_notice() -> None:
    notice = st.session_state.pop(NOTICE_KEY, None)
    if notice is None:
        return
    message, failures = notice
    st.success(message, icon=":material/check_circle:")
    if failures:
        st.error(f"The server refused {len(failures)}: " + "; ".join(failures))


def _recently_reviewed(engine: Engine, book: CodeBook) -> None:
    with st.expander("Recently reviewed"):
        latest = recent_feedback(engine, limit=RECENT_ROWS)
        if not latest:
            st.caption("No feedback yet.")
            return
        st.dataframe([{"time": f.created_at, "title": f.designation or "(no title)", "productid": f.productid,
                       "code given": book.label(f.prdtypecode), "predicted": book.label(f.predicted_code),
                       "by": f.actor, "in catalogue": f.applied_at is not None} for f in latest],
                     hide_index=True, column_config={
                         "time": st.column_config.DatetimeColumn("time", format="YYYY-MM-DD HH:mm:ss"),
                         "productid": st.column_config.NumberColumn("productid", format="%d")})


def _describe(item: ReviewItem, book: CodeBook) -> str:
    probability = "-" if item.top_probability is None else f"{item.top_probability:.0%}"
    return f"{item.designation or '(no title)'} · {book.label(item.top_code)} · {probability}"


def _suggestion(item: ReviewItem, codes: Sequence[int]) -> int:
    """The runner-up code when the server serves it (the likeliest correction), else the first served code."""
    for code, _ in item.ranked[1:]:
        if code in codes:
            return codes.index(code)
    return 0


def _round() -> int:
    return st.session_state.get(ROUND_KEY, 0)


render(session.backends())
