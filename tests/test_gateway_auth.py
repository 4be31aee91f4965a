import base64
import hashlib
import hmac
import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardworld.gateway import auth
from shardworld.gateway.auth import (
    MAX_PLAYER_ID,
    AuthError,
    Claims,
    TokenVerifier,
    issue_token,
    token_main,
    verify_token,
)

SECRET = "s3cret-for-tests"
NOW = 1_700_000_000.0


def forge(secret: str | bytes, claims: object) -> str:
    """A token built from the format description alone (independent of the module)."""
    key = secret.encode() if isinstance(secret, str) else secret
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    sig = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return body + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def reason(secret: str | bytes, token: str, now: float = NOW) -> str:
    with pytest.raises(AuthError) as exc:
        verify_token(secret, token, now)
    return exc.value.reason


def test_round_trip_gives_the_claims() -> None:
    token = issue_token(SECRET, 42, 600, name="ada", now=NOW)
    assert verify_token(SECRET, token, NOW + 10) == Claims(42, int(NOW), int(NOW + 600), "ada")
    assert verify_token(SECRET.encode(), token, NOW) == verify_token(SECRET, token, NOW)


def test_the_format_is_base64url_json_dot_hmac_sha256() -> None:
    token = issue_token(SECRET, 7, 60, now=NOW)
    body, sig = token.split(".")
    assert "=" not in token
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert claims == {"v": 1, "pid": 7, "iat": int(NOW), "exp": int(NOW + 60), "name": ""}
    expected = hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)) == expected
    # A token made by another implementation of the same format is accepted.
    other = forge(SECRET, {"v": 1, "pid": 9, "iat": 1, "exp": int(NOW) + 5, "name": "bo"})
    assert verify_token(SECRET, other, NOW) == Claims(9, 1, int(NOW) + 5, "bo")


def test_expiry_is_exclusive() -> None:
    token = issue_token(SECRET, 1, 100, now=NOW)
    verify_token(SECRET, token, NOW + 99.9)
    assert reason(SECRET, token, NOW + 100) == "expired"
    assert reason(SECRET, token, NOW + 1e6) == "expired"


def test_wrong_secret_and_tampering_are_bad_signatures() -> None:
    token = issue_token(SECRET, 5, 100, now=NOW)
    assert reason("another secret", token) == "bad signature"
    body, sig = token.split(".")
    evil_body = forge("attacker", {"v": 1, "pid": 1, "iat": 0, "exp": 2**40}).split(".")[0]
    assert reason(SECRET, f"{evil_body}.{sig}") == "bad signature"
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    assert reason(SECRET, f"{body}.{flipped}") == "bad signature"


def test_the_signature_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    token = issue_token(SECRET, 5, 100, now=NOW)
    verify_token(SECRET, token, NOW)
    with pytest.raises(AuthError):
        verify_token("other", token, NOW)
    assert len(calls) == 2


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b.c",
        ".abc",
        "abc.",
        "ab!c.def",
        "abc.de+f",
        "abc.de=f",
        "a" * 2000 + ".b",
        "é.b",
    ],
)
def test_malformed_tokens(token: str) -> None:
    assert reason(SECRET, token) == "malformed token"


def test_non_string_token_is_malformed() -> None:
    assert reason(SECRET, b"abc.def") == "malformed token"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ([1, 2], "malformed claims"),
        ("x", "malformed claims"),
        ({"v": 2, "pid": 1, "iat": 0, "exp": 2**40}, "unsupported token version"),
        ({"v": 1, "pid": "1", "iat": 0, "exp": 2**40}, "bad claims: pid"),
        ({"v": 1, "pid": True, "iat": 0, "exp": 2**40}, "bad claims: pid"),
        ({"v": 1, "pid": 1, "iat": 0, "exp": 1.5e12}, "bad claims: exp"),
        ({"v": 1, "pid": 1, "exp": 2**40}, "bad claims: iat"),
        ({"v": 1, "pid": 1, "iat": 0, "exp": 2**40, "name": 3}, "bad claims: name"),
        ({"v": 1, "pid": 1, "iat": 0, "exp": 2**40, "name": "x" * 65}, "bad claims: name"),
        ({"v": 1, "pid": 0, "iat": 0, "exp": 2**40}, "player id out of range"),
        ({"v": 1, "pid": -3, "iat": 0, "exp": 2**40}, "player id out of range"),
        ({"v": 1, "pid": MAX_PLAYER_ID + 1, "iat": 0, "exp": 2**40}, "player id out of range"),
    ],
)
def test_signed_but_invalid_claims(claims: object, why: str) -> None:
    assert reason(SECRET, forge(SECRET, claims)) == why


def test_signed_garbage_is_malformed_claims() -> None:
    body = base64.urlsafe_b64encode(b"\xff\xfe not json").rstrip(b"=").decode()
    sig = hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).digest()
    token = body + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    assert reason(SECRET, token) == "malformed claims"


def test_extremes_of_the_player_id_range() -> None:
    for pid in (1, MAX_PLAYER_ID):
        assert verify_token(SECRET, issue_token(SECRET, pid, 10, now=NOW), NOW).player_id == pid


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"player_id": 0}, "player_id"),
        ({"player_id": MAX_PLAYER_ID + 1}, "player_id"),
        ({"player_id": True}, "integer"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": float("inf")}, "ttl_s"),
        ({"ttl_s": float("nan")}, "ttl_s"),
        ({"name": "n" * 65}, "name"),
        ({"secret": ""}, "secret"),
    ],
)
def test_issue_token_refuses_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"secret": SECRET, "player_id": 1, "ttl_s": 10.0, "now": NOW}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        issue_token(**args)  # type: ignore[arg-type]


def test_verify_refuses_an_empty_secret() -> None:
    with pytest.raises(ValueError):
        verify_token("", "a.b", NOW)


def test_verifier_uses_its_clock() -> None:
    t = [NOW]
    verify = TokenVerifier(SECRET, clock=lambda: t[0])
    token = issue_token(SECRET, 3, 10, now=NOW)
    assert verify(token).player_id == 3
    t[0] = NOW + 10
    with pytest.raises(AuthError, match="expired"):
        verify(token)


@settings(max_examples=80, deadline=None)
@given(
    pid=st.integers(1, MAX_PLAYER_ID),
    ttl=st.floats(1.0, 1e8),
    name=st.text(max_size=64),
    secret=st.binary(min_size=1, max_size=64),
)
def test_round_trip_property(pid: int, ttl: float, name: str, secret: bytes) -> None:
    token = issue_token(secret, pid, ttl, name=name, now=NOW)
    assert len(token) <= auth.MAX_TOKEN_LEN
    claims = verify_token(secret, token, NOW)
    assert (claims.player_id, claims.name) == (pid, name)
    assert claims.expires_at == int(NOW + ttl)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_single_character_change_is_refused(data: st.DataObject) -> None:
    token = issue_token(SECRET, 77, 1000, name="x", now=NOW)
    i = data.draw(st.integers(0, len(token) - 1))
    alphabet = string.ascii_letters + string.digits + "-_.=+/ "
    c = data.draw(st.sampled_from([ch for ch in alphabet if ch != token[i]]))
    with pytest.raises(AuthError):
        verify_token(SECRET, token[:i] + c + token[i + 1 :], NOW)


@settings(max_examples=100, deadline=None)
@given(token=st.text(max_size=300))
def test_arbitrary_text_only_ever_raises_auth_error(token: str) -> None:
    with pytest.raises(AuthError):
        verify_token(SECRET, token, NOW)


# --- shardworld token ---------------------------------------------------------------------


def test_token_command_prints_a_valid_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert token_main(["--secret", SECRET, "--player", "12", "--ttl", "60", "--name", "ada"]) == 0
    token = capsys.readouterr().out.strip()
    claims = verify_token(SECRET, token, claims_time(token))
    assert (claims.player_id, claims.name) == (12, "ada")
    assert claims.expires_at - claims.issued_at == 60


def claims_time(token: str) -> float:
    body = token.split(".")[0]
    return float(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["iat"])


def test_token_command_reads_the_secret_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SHARDWORLD_SECRET", "from-env")
    assert token_main(["--player", "5"]) == 0
    token = capsys.readouterr().out.strip()
    claims = verify_token("from-env", token, claims_time(token))
    assert claims.player_id == 5
    assert claims.expires_at - claims.issued_at == 3600


def test_token_command_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SHARDWORLD_SECRET", raising=False)
    assert token_main(["--player", "5"]) == 2
    assert "SHARDWORLD_SECRET" in capsys.readouterr().err
    assert token_main(["--secret", "s", "--player", "0"]) == 2
    assert "player_id" in capsys.readouterr().err
    assert token_main(["--secret", "s", "--player", "1", "--ttl", "-1"]) == 2
    capsys.readouterr()
    assert token_main(["--secret", "s"]) == 2  # --player is required
    assert "--player" in capsys.readouterr().err


def test_token_command_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert token_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "shardworld token" in out
    assert "SHARDWORLD_SECRET" in out
    assert "--ttl" in out
