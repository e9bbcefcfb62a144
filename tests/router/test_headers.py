from multidict import CIMultiDict, CIMultiDictProxy

from router.headers import client_response_headers, request_id_from, upstream_request_headers


def proxy_of(*pairs):
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_hop_by_hop_and_connection_named_headers_are_stripped_before_forwarding_is_set():
    incoming = proxy_of(
        ("Host", "router.example"),
        ("Connection", "close, X-Forwarded-For, X-Secret"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Secret", "s"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic x"),
        ("TE", "trailers"),
        ("Content-Length", "12"),
        ("Authorization", "Bearer end-to-end"),
    )
    out = upstream_request_headers(incoming, peer="10.0.0.7", scheme="http", request_id="r1")
    assert out["X-Forwarded-For"] == "10.0.0.7"
    assert out["X-Forwarded-Host"] == "router.example"
    assert out["X-Forwarded-Proto"] == "http"
    assert out["Authorization"] == "Bearer end-to-end"
    assert out["X-Request-Id"] == "r1"
    for gone in ("Connection", "X-Secret", "Keep-Alive", "Transfer-Encoding", "Upgrade", "Proxy-Authorization", "TE"):
        assert gone not in out
    assert "Host" not in out and "Content-Length" not in out


def test_an_existing_forwarded_for_chain_is_extended():
    out = upstream_request_headers(
        proxy_of(("X-Forwarded-For", "1.1.1.1")), peer="2.2.2.2", scheme="https", request_id="r"
    )
    assert out["X-Forwarded-For"] == "1.1.1.1, 2.2.2.2"
    assert out["X-Forwarded-Proto"] == "https"


def test_response_headers_lose_hop_by_hop_and_gain_lane_and_id():
    out = client_response_headers(
        proxy_of(("Connection", "keep-alive, X-Internal"), ("X-Internal", "1"), ("Content-Type", "text/plain")),
        lane="batch",
        request_id="abc",
    )
    assert dict(out) == {"Content-Type": "text/plain", "X-Modeshift-Lane": "batch", "X-Request-Id": "abc"}


def test_a_clients_request_id_is_kept_when_reasonable():
    assert request_id_from(proxy_of(("X-Request-Id", "client-42"))) == "client-42"
    made = request_id_from(proxy_of(("X-Request-Id", "has spaces\r\n")))
    other = request_id_from(proxy_of())
    assert made != "has spaces\r\n" and made != other and len(made) == len(other) == 24
