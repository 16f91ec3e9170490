"""The Review page's default labeller: the user an authenticating proxy names in the request headers.

    .venv/bin/python -m pytest -q tests/test_review_identity.py
"""
from streamlit.runtime.context import StreamlitHeaders

from dashboard.review_views import USER_HEADERS, proxy_user


def test_the_proxy_user_header_names_the_labeller():
    assert proxy_user({"X-Remote-User": "alice", "Host": "galaxy-morph.example.org"}) == "alice"
    assert proxy_user({"x-auth-request-user": " bob "}) == "bob"  # any case; stripped


def test_headers_are_tried_in_order_and_blank_ones_skipped():
    both = {"X-Forwarded-User": "carol", "X-Remote-User": "alice"}
    assert USER_HEADERS[0] == "X-Remote-User" and proxy_user(both) == "alice"
    assert proxy_user({"X-Remote-User": "  ", "X-Forwarded-User": "carol"}) == "carol"


def test_no_proxy_user_leaves_the_name_to_type():
    assert proxy_user({}) == ""
    assert proxy_user({"Authorization": "Basic YWxpY2U6c2VjcmV0", "Cookie": "a=b"}) == ""


def test_it_reads_streamlits_own_headers():
    """st.context.headers: case-insensitive, repeated names allowed (the first value is used)."""
    headers = StreamlitHeaders([("x-remote-user", "dave"), ("X-Remote-User", "eve"), ("Accept", "*/*")])
    assert proxy_user(headers) == "dave"
    assert proxy_user(StreamlitHeaders([])) == ""
