"""Pure tests of nginx mail auth_http: the request nginx sends, the headers it reads back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ownership.authhttp import (
    MAX_HEADER_BYTES,
    SMTP_AUTH_FAILED,
    SMTP_TEMP_FAILURE,
    STATUS_OK,
    AuthHttpError,
    AuthRequest,
    failure,
    parse_request,
    success,
)
from ownership.errors import OwnershipError

# What nginx 1.22 sent for an IMAP LOGIN (recipe), plus the secret header.
NGINX = {
    "Host": "localhost",
    "Auth-Method": "plain",
    "Auth-User": "alice@example.test",
    "Auth-Pass": "s3cret",
    "Auth-Protocol": "imap",
    "Auth-Login-Attempt": "1",
    "Client-IP": "127.0.0.1",
    "X-Auth-Key": "shared",
}


def test_parse_a_login() -> None:
    request = parse_request(NGINX, secret_header="X-Auth-Key")
    assert request == AuthRequest(
        method="plain",
        user="alice@example.test",
        password="s3cret",
        protocol="imap",
        attempt=1,
        client_ip="127.0.0.1",
        secret="shared",
    )
    assert request.secret_matches("shared")
    assert not request.secret_matches("other")
    assert not request.secret_matches("")
    assert not parse_request(NGINX).secret_matches("shared")  # no header named: no secret


def test_header_names_are_case_insensitive() -> None:
    lower = {name.lower(): value for name, value in NGINX.items()}
    assert parse_request(lower) == parse_request(NGINX)


def test_password_stays_out_of_repr() -> None:
    shown = repr(parse_request(NGINX, secret_header="X-Auth-Key"))
    assert "s3cret" not in shown and "shared" not in shown
    assert "alice@example.test" in shown


@pytest.mark.parametrize(
    ("sent", "decoded"),
    [
        ("a+b", "a+b"),  # "+" arrives as it is: never unquote_plus
        ('say "hi"', 'say "hi"'),
        ("with%20space", "with space"),
        ("100%25", "100%"),
        ("tab%09x", "tab\tx"),
        ("caf\xc3\xa9", "café"),  # raw UTF-8 octets, as latin-1 text (WSGI, http.server)
        ("%C3%A9", "é"),
    ],
)
def test_password_decoding(sent: str, decoded: str) -> None:
    assert parse_request({**NGINX, "Auth-Pass": sent}).password == decoded


def test_header_encoding_follows_the_http_server() -> None:
    # aiohttp hands header values over decoded as UTF-8 (surrogateescape).
    aiohttp_style = {**NGINX, "Auth-User": "jé+x", "Auth-Pass": "p\udcff"}
    with pytest.raises(AuthHttpError, match="Auth-User is not UTF-8"):
        parse_request(aiohttp_style)  # read as latin-1, "é" is one bad octet
    with pytest.raises(AuthHttpError, match="Auth-Pass is not UTF-8"):
        parse_request(aiohttp_style, header_encoding="utf-8")  # \xff is not UTF-8
    request = parse_request({**aiohttp_style, "Auth-Pass": "pw"}, header_encoding="utf-8")
    assert request.user == "jé+x"


@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=30))
def test_any_password_survives_nginx_escaping(password: str) -> None:
    # nginx escapes space, "%" and control characters only, then sends raw UTF-8.
    raw = password.encode()
    escaped = b"".join(
        b"%%%02X" % byte if byte <= 0x20 or byte in (0x25, 0x7F) else bytes([byte]) for byte in raw
    )
    for encoding in ("latin-1", "utf-8"):
        value = escaped.decode(encoding, "surrogateescape")
        got = parse_request({**NGINX, "Auth-Pass": value}, header_encoding=encoding)
        assert got.password == password


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"Auth-Protocol": "nntp"}, "unknown Auth-Protocol"),
        ({"Auth-Method": "kerberos"}, "unknown Auth-Method"),
        ({"Auth-Login-Attempt": "x"}, "Auth-Login-Attempt is not a number"),
        ({"Auth-Login-Attempt": "0"}, "Auth-Login-Attempt must be a number from 1"),
        # More digits than int() converts (4,300): its own ValueError escaped.
        ({"Auth-Login-Attempt": "9" * 5000}, "Auth-Login-Attempt is not a number"),
        ({"Auth-Login-Attempt": "\u00b2"}, "Auth-Login-Attempt is not a number"),
        ({"Auth-Login-Attempt": "1\x1f"}, "Auth-Login-Attempt is not a number"),
        ({"Auth-User": "a%0Db"}, "Auth-User holds a control character"),
        ({"Auth-User": "%FF"}, "Auth-User is not UTF-8"),
        # What lands in the fail2ban line (rip=<HOST>) must be an address.
        ({"Client-IP": "192.0.2.1 proto=imap"}, "Client-IP is not an IP address"),
        ({"Client-IP": "mail.example.test"}, "Client-IP is not an IP address"),
        ({"Client-IP": "192.0.2.1\x1f"}, "Client-IP is not an IP address"),
    ],
)
def test_bad_requests_are_clear_errors(change: dict[str, str], message: str) -> None:
    with pytest.raises(AuthHttpError, match=message) as caught:
        parse_request({**NGINX, **change})
    assert isinstance(caught.value, OwnershipError)  # one error tree
    assert isinstance(caught.value, ValueError)  # routing catches ValueError
    assert caught.value.code == "auth_http_invalid"


def test_missing_protocol_is_not_nginx() -> None:
    without = {k: v for k, v in NGINX.items() if k != "Auth-Protocol"}
    with pytest.raises(AuthHttpError, match="Auth-Protocol is missing"):
        parse_request(without)


def test_smtp_and_pop3_requests() -> None:
    smtp = parse_request(
        {**NGINX, "Auth-Protocol": "smtp", "Client-Host": "mx.example", "Auth-Login-Attempt": "3"}
    )
    assert (smtp.protocol, smtp.client_host, smtp.attempt) == ("smtp", "mx.example", 3)
    apop = parse_request(
        {**NGINX, "Auth-Protocol": "pop3", "Auth-Method": "apop", "Auth-Salt": "<1.2@h>"}
    )
    assert (apop.method, apop.salt) == ("apop", "<1.2@h>")


def test_success() -> None:
    assert success("127.0.0.1", 10143) == {
        "Auth-Status": STATUS_OK,
        "Auth-Server": "127.0.0.1",
        "Auth-Port": "10143",
    }
    assert success("::1", 143)["Auth-Server"] == "::1"
    assert success("2001:db8:0::1", 143)["Auth-Server"] == "2001:db8::1"
    headers = success("10.0.0.2", 110, user="alice", password="pa ss+%")
    assert headers["Auth-User"] == "alice"
    assert headers["Auth-Pass"] == "pa ss+%"  # nginx copies it as it is


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("imap.example.test", 143), "Auth-Server must be an IP address"),
        (("[::1]", 143), "Auth-Server must be an IP address"),
        (("fe80::1%eth0", 143), "IPv6 zone"),
        (("127.0.0.1", 0), "Auth-Port must be 1-65535"),
        (("127.0.0.1", 65536), "Auth-Port must be 1-65535"),
        (("127.0.0.1", True), "Auth-Port must be 1-65535"),
    ],
)
def test_success_is_validated(args: tuple[str, int], message: str) -> None:
    with pytest.raises(AuthHttpError, match=message):
        success(*args)


def test_success_overrides_are_validated() -> None:
    with pytest.raises(AuthHttpError, match="control character"):
        success("127.0.0.1", 143, user="a\r\nAuth-Server: 10.6.6.6")
    with pytest.raises(AuthHttpError, match="space"):
        success("127.0.0.1", 143, password=" padded ")  # nginx would trim it
    with pytest.raises(AuthHttpError, match="exceeds"):
        success("127.0.0.1", 143, user="u" * 300, password="p" * 300)


def test_failure() -> None:
    assert failure("Invalid login or password", 3, "imap") == {
        "Auth-Status": "Invalid login or password",
        "Auth-Wait": "3",
    }
    assert failure("No route", None, "pop3") == {"Auth-Status": "No route"}
    assert failure("Bad", 0, "smtp") == {
        "Auth-Status": "Bad",
        "Auth-Wait": "0",
        "Auth-Error-Code": SMTP_AUTH_FAILED,
    }
    temporary = failure("Try later", 5, "smtp", error_code=SMTP_TEMP_FAILURE)
    assert temporary["Auth-Error-Code"] == "454 4.7.0"


def test_failure_text_is_made_safe() -> None:
    text = failure("line one\r\nAuth-Status: OK\x00", 1, "imap")["Auth-Status"]
    assert text == "line one Auth-Status: OK"
    long = failure("é" * 500, 1, "imap")["Auth-Status"]
    assert long == "é" * 100  # 200 octets, cut between characters
    for reserved in ("OK", "WAIT", " \r\n"):
        with pytest.raises(AuthHttpError):
            failure(reserved, 1, "imap")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wait": -1}, "Auth-Wait"),
        ({"protocol": "nntp"}, "unknown protocol"),
        ({"protocol": "smtp", "error_code": "five three five"}, "Auth-Error-Code must be"),
        ({"error_code": "535 5.7.8"}, "SMTP only"),
    ],
)
def test_failure_is_validated(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"reason": "No", "wait": 1, "protocol": "imap", **kwargs}
    with pytest.raises(AuthHttpError, match=message):
        failure(**args)  # type: ignore[arg-type]


@given(st.text(max_size=2000), st.sampled_from(["imap", "pop3", "smtp"]))
def test_any_failure_answer_fits_and_is_clean(reason: str, protocol: str) -> None:
    try:
        headers = failure(reason, 2, protocol)
    except AuthHttpError:
        return  # empty after cleaning, or OK/WAIT
    wire = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
    assert len(wire) <= MAX_HEADER_BYTES < 1024
    assert all(name.replace("-", "").isalnum() and name.isascii() for name in headers)
    assert wire.count(b"\r\n") == len(headers) and b"\x00" not in wire
