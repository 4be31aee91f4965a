from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardworld.gateway.auth import AuthError, Claims, TokenVerifier, issue_token
from shardworld.gateway.session import (
    Action,
    Close,
    Forward,
    Join,
    ReplyPong,
    Report,
    Send,
    Session,
    SessionLimits,
    State,
    SubmitInput,
)
from shardworld.protocol.messages import (
    CloseCode,
    Error,
    ErrorCode,
    Hello,
    Input,
    Kick,
    Message,
    Ping,
    decode_server,
    encode,
)

SECRET = "session-secret"
WALL = 1_700_000_000.0
LIMITS = SessionLimits()


def verifier() -> TokenVerifier:
    return TokenVerifier(SECRET, clock=lambda: WALL)


def token(pid: int = 42, ttl: float = 60.0) -> str:
    return issue_token(SECRET, pid, ttl, name="p", now=WALL)


def new(limits: SessionLimits = LIMITS, dev: bool = False, now: float = 0.0) -> Session:
    return Session(limits, now, None if dev else verifier(), dev=dev)


def joined(limits: SessionLimits = LIMITS, pid: int = 42) -> Session:
    s = new(limits)
    acts = s.receive(encode(Hello(token=token(pid))), 0.0)
    assert acts == [Join(pid, "p", "", "")]
    s.joined(pid, 1000 + pid)
    return s


def sent(actions: list[Action]) -> list[Any]:
    return [decode_server(a.data) for a in actions if isinstance(a, Send)]


def codes(actions: list[Action]) -> list[int]:
    return [m.code for m in sent(actions) if isinstance(m, Error | Kick)]


def closes(actions: list[Action]) -> list[Close]:
    return [a for a in actions if isinstance(a, Close)]


# --- the handshake ------------------------------------------------------------------------


def test_hello_with_a_token_asks_to_join_then_inputs_flow() -> None:
    s = new()
    assert s.state is State.AWAITING_HELLO and s.deadline == LIMITS.hello_timeout_s
    acts = s.receive(encode(Hello(token=token(7), resume="r", client="bot/1")), 0.1)
    assert acts == [Join(7, "p", "r", "bot/1")]
    assert s.state is State.JOINING and s.deadline is None
    s.joined(7, 99)
    assert s.state is State.JOINED and (s.player_id, s.entity_id) == (7, 99)
    assert s.receive(encode(Input(1, 0.5, -1.0, 3)), 0.2) == [SubmitInput(1, 0.5, -1.0, 3)]
    assert s.receive(encode(Ping(9, 1.25)), 0.3) == [ReplyPong(9, 1.25)]
    assert s.receive(encode(Message("chat", {"t": "hi"})), 0.4) == [Forward("chat", {"t": "hi"})]


def test_dev_mode_accepts_a_hello_without_token_as_anonymous() -> None:
    s = new(dev=True)
    assert s.receive(encode(Hello()), 0.0) == [Join(None, "", "", "")]
    # Without a verifier a dev session ignores whatever token is sent.
    s2 = new(dev=True)
    assert s2.receive(encode(Hello(token="junk")), 0.0) == [Join(None, "", "", "")]


def test_dev_mode_with_a_verifier_still_checks_tokens() -> None:
    s = Session(LIMITS, 0.0, verifier(), dev=True)
    acts = s.receive(encode(Hello(token="junk.token")), 0.0)
    assert codes(acts) == [ErrorCode.AUTH_FAILED]
    s2 = Session(LIMITS, 0.0, verifier(), dev=True)
    assert s2.receive(encode(Hello(token=token(3))), 0.0) == [Join(3, "p", "", "")]


def test_a_session_needs_a_verifier_unless_dev() -> None:
    with pytest.raises(ValueError):
        Session(LIMITS, 0.0, None, dev=False)


@pytest.mark.parametrize(
    ("hello", "code", "close"),
    [
        (Hello(version=2, token=""), ErrorCode.UNSUPPORTED_VERSION, CloseCode.UNSUPPORTED_VERSION),
        (Hello(version=0), ErrorCode.UNSUPPORTED_VERSION, CloseCode.UNSUPPORTED_VERSION),
        (Hello(token=""), ErrorCode.AUTH_FAILED, CloseCode.AUTH_FAILED),
        (Hello(token="not-a-token"), ErrorCode.AUTH_FAILED, CloseCode.AUTH_FAILED),
        (
            Hello(token=issue_token("other", 1, 60, now=WALL)),
            ErrorCode.AUTH_FAILED,
            CloseCode.AUTH_FAILED,
        ),
        (
            Hello(token=issue_token(SECRET, 1, 60, now=WALL - 120)),
            ErrorCode.AUTH_FAILED,
            CloseCode.AUTH_FAILED,
        ),
    ],
)
def test_a_refused_hello_is_an_error_then_a_close(hello: Hello, code: int, close: int) -> None:
    s = new()
    acts = s.receive(encode(hello), 0.0)
    assert codes(acts) == [code]
    assert [c.code for c in closes(acts)] == [close]
    assert isinstance(acts[-1], Close)
    assert s.state is State.CLOSING
    assert s.receive(encode(Hello(token=token())), 0.1) == []


def test_expired_token_says_so() -> None:
    s = new()
    acts = s.receive(encode(Hello(token=issue_token(SECRET, 1, 60, now=WALL - 61))), 0.0)
    assert "expired" in sent(acts)[0].text


def test_no_hello_in_time_is_kicked_with_4005() -> None:
    s = new(now=10.0)
    assert s.poll(14.9) == []
    acts = s.poll(15.0)
    assert codes(acts) == [ErrorCode.NOT_JOINED]
    assert isinstance(sent(acts)[0], Kick)
    assert closes(acts) == [
        Close(CloseCode.HANDSHAKE_TIMEOUT, "no HELLO in time", ErrorCode.NOT_JOINED)
    ]
    assert s.poll(20.0) == []
    # After HELLO the deadline is gone.
    s2 = new(now=10.0)
    s2.receive(encode(Hello(token=token())), 11.0)
    assert s2.poll(100.0) == []


def test_messages_before_hello_and_a_second_hello_are_errors() -> None:
    s = new()
    for msg in (Input(1, 0, 0), Ping(1), Message("x")):
        acts = s.receive(encode(msg), 0.0)
        assert codes(acts) == [ErrorCode.NOT_JOINED] and not closes(acts)
    assert s.receive(encode(Hello(token=token(8))), 0.0) == [Join(8, "p", "", "")]
    acts = s.receive(encode(Hello(token=token(8))), 0.0)
    assert codes(acts) == [ErrorCode.ALREADY_JOINED]  # still joining
    s.joined(8, 1)
    assert codes(s.receive(encode(Hello(token=token(8))), 0.0)) == [ErrorCode.ALREADY_JOINED]
    assert codes(s.receive(encode(Input(1, 0, 0)), 0.0)) == []


def test_join_failed_and_kick() -> None:
    s = new()
    s.receive(encode(Hello(token=token())), 0.0)
    acts = s.join_failed(ErrorCode.INTERNAL, "no room", CloseCode.INTERNAL, 0.0)
    assert codes(acts) == [ErrorCode.INTERNAL]
    assert closes(acts)[0].code == CloseCode.INTERNAL
    s2 = joined()
    acts = s2.kick(ErrorCode.SLOW_READER, "too slow", CloseCode.SLOW_READER, 1.0)
    assert isinstance(sent(acts)[0], Kick)
    assert closes(acts) == [Close(CloseCode.SLOW_READER, "too slow", ErrorCode.SLOW_READER)]
    assert s2.kick(ErrorCode.ABUSE, "again", CloseCode.ABUSE, 1.0) == []
    assert s2.error(ErrorCode.RESUME_FAILED, "x", 1.0) == []


def test_joined_only_applies_while_joining() -> None:
    s = new()
    s.joined(1, 2)
    assert s.state is State.AWAITING_HELLO


# --- frames and decoding ------------------------------------------------------------------


def test_text_frames_close_with_1003() -> None:
    s = joined()
    acts = s.receive("hello", 0.0)
    assert codes(acts) == [ErrorCode.TEXT_FRAME]
    assert closes(acts)[0].code == CloseCode.UNSUPPORTED_DATA == 1003
    assert s.receive(encode(Input(1, 0, 0)), 0.0) == []


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xc1", ErrorCode.MALFORMED),
        (b"", ErrorCode.MALFORMED),
        (msgpack.packb({"a": 1}), ErrorCode.MALFORMED),
        (msgpack.packb([3, 1, 0.0, 0.0]) + b"\x00", ErrorCode.MALFORMED),
        (msgpack.packb([99]), ErrorCode.UNKNOWN_TYPE),
        (msgpack.packb([4, 1, 2, b""]), ErrorCode.UNKNOWN_TYPE),  # a server message
        (msgpack.packb([3, "one", 0.0, 0.0]), ErrorCode.BAD_FIELD),
        (msgpack.packb([3]), ErrorCode.BAD_FIELD),
        (msgpack.packb([3, 1, float("nan"), 0.0]), ErrorCode.BAD_FIELD),
        (msgpack.packb([3, 1, 1e300, 0.0]), ErrorCode.BAD_FIELD),  # beyond float32
        (msgpack.packb([5, "", None]), ErrorCode.BAD_FIELD),
        (bytes(4097), ErrorCode.TOO_LARGE),
    ],
)
def test_bad_messages_get_their_code_and_are_dropped(data: bytes, code: ErrorCode) -> None:
    s = joined()
    acts = s.receive(data, 0.0)
    assert codes(acts) == [code]
    assert [a.code for a in acts if isinstance(a, Report)] == [code]
    assert not closes(acts)
    assert s.state is State.JOINED
    assert s.receive(encode(Input(1, 0, 0)), 0.0) == [SubmitInput(1, 0.0, 0.0, 0)]


# --- input sequence numbers -----------------------------------------------------------------


def test_input_seq_must_increase_and_not_jump_too_far() -> None:
    s = joined()
    assert s.receive(encode(Input(5, 1, 0)), 0.0) == [SubmitInput(5, 1.0, 0.0, 0)]
    assert codes(s.receive(encode(Input(5, 1, 0)), 0.0)) == [ErrorCode.OUT_OF_ORDER]
    assert codes(s.receive(encode(Input(4, 1, 0)), 0.0)) == [ErrorCode.OUT_OF_ORDER]
    jump = LIMITS.max_seq_jump
    assert codes(s.receive(encode(Input(5 + jump + 1, 1, 0)), 0.0)) == [ErrorCode.FROM_THE_FUTURE]
    assert s.receive(encode(Input(5 + jump, 1, 0)), 0.0) == [SubmitInput(5 + jump, 1.0, 0.0, 0)]
    assert s.last_seq == 5 + jump and s.inputs == 2


def test_resumed_sessions_continue_the_numbering() -> None:
    s = new()
    s.receive(encode(Hello(token=token())), 0.0)
    s.joined(42, 1, last_seq=5000)
    assert codes(s.receive(encode(Input(4000, 0, 0)), 0.0)) == [ErrorCode.OUT_OF_ORDER]
    assert s.receive(encode(Input(5001, 0, 0)), 0.0) == [SubmitInput(5001, 0.0, 0.0, 0)]


def test_intents_are_passed_on_unclamped() -> None:
    s = joined()
    assert s.receive(encode(Input(1, 30.0, -40.0)), 0.0) == [SubmitInput(1, 30.0, -40.0, 0)]


@settings(max_examples=80, deadline=None)
@given(seqs=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 3000), max_size=40))
def test_seq_acceptance_matches_a_model(seqs: list[int]) -> None:
    limits = SessionLimits(error_burst=1000, message_burst=1000)
    s = joined(limits)
    last = 0
    for seq in seqs:
        acts = s.receive(encode(Input(seq, 0, 0)), 0.0)
        if last < seq <= last + limits.max_seq_jump:
            assert acts == [SubmitInput(seq, 0.0, 0.0, 0)]
            last = seq
        elif seq <= last:
            assert codes(acts) == [ErrorCode.OUT_OF_ORDER]
        else:
            assert codes(acts) == [ErrorCode.FROM_THE_FUTURE]
    assert s.last_seq == last


# --- rate limits and the error budget --------------------------------------------------------


def test_message_rate_limit_drops_with_an_error_and_refills() -> None:
    limits = SessionLimits(messages_per_s=10, message_burst=5, error_burst=100)
    s = joined(limits)  # the HELLO took one token
    results = [s.receive(encode(Ping(i)), 0.0) for i in range(6)]
    assert [r == [ReplyPong(i, 0.0)] for i, r in enumerate(results)] == [True] * 4 + [False] * 2
    assert codes(results[4]) == [ErrorCode.RATE_LIMITED]
    # 0.1 s later one more token is there.
    assert s.receive(encode(Ping(7)), 0.1) == [ReplyPong(7, 0.0)]
    assert codes(s.receive(encode(Ping(8)), 0.1)) == [ErrorCode.RATE_LIMITED]


def test_byte_rate_limit() -> None:
    limits = SessionLimits(bytes_per_s=1000, byte_burst=4096, error_burst=100)
    s = joined(limits)
    big = encode(Message("chat", "x" * 3000))
    assert s.receive(big, 0.0) == [Forward("chat", "x" * 3000)]
    assert codes(s.receive(big, 0.0)) == [ErrorCode.RATE_LIMITED]
    assert codes(s.receive(big, 2.0)) == [ErrorCode.RATE_LIMITED]  # 4096 - 3000 - hello + 2000
    assert s.receive(big, 3.0) == [Forward("chat", "x" * 3000)]


def test_too_many_errors_get_the_player_kicked_for_abuse() -> None:
    limits = SessionLimits(error_burst=3, errors_per_s=1.0)
    s = joined(limits)
    for _ in range(3):
        acts = s.receive(b"\xc1", 0.0)
        assert codes(acts) == [ErrorCode.MALFORMED] and not closes(acts)
    acts = s.receive(b"\xc1", 0.0)
    assert codes(acts) == [ErrorCode.MALFORMED, ErrorCode.ABUSE]
    assert closes(acts) == [
        Close(CloseCode.ABUSE, "too many errors (last: MALFORMED)", ErrorCode.ABUSE)
    ]
    assert s.receive(encode(Ping(1)), 0.0) == []


def test_the_error_budget_refills() -> None:
    s = joined(SessionLimits(error_burst=2, errors_per_s=1.0))
    for t in range(20):  # one error a second is sustainable
        assert not closes(s.receive(b"\xc1", float(t)))


def test_a_flood_is_rate_limited_then_kicked() -> None:
    s = joined(SessionLimits(messages_per_s=10, message_burst=10, error_burst=5, errors_per_s=0.5))
    kinds: list[int] = []
    for i in range(100):
        acts = s.receive(encode(Ping(i)), i * 0.001)
        kinds.extend(codes(acts))
        if closes(acts):
            assert closes(acts)[0].code == CloseCode.ABUSE
            break
    else:
        pytest.fail("never kicked")
    assert kinds.count(ErrorCode.RATE_LIMITED) == 6 and kinds[-1] == ErrorCode.ABUSE


def test_each_code_is_reported_first_once_and_counted() -> None:
    s = joined(SessionLimits(error_burst=100))
    reports = []
    for data in (b"\xc1", b"\xc1", msgpack.packb([99]), b"\xc1"):
        reports += [a for a in s.receive(data, 0.0) if isinstance(a, Report)]
    assert [(r.code, r.first) for r in reports] == [
        (ErrorCode.MALFORMED, True),
        (ErrorCode.MALFORMED, False),
        (ErrorCode.UNKNOWN_TYPE, True),
        (ErrorCode.MALFORMED, False),
    ]
    st_ = s.stats()
    assert st_["errors"] == {"MALFORMED": 3, "UNKNOWN_TYPE": 1}
    assert st_["messages_in"] == 5 and st_["state"] == "JOINED"
    assert s.note(ErrorCode.TOO_LARGE, "x").first


def test_limits_are_validated() -> None:
    for bad in (
        {"messages_per_s": 0},
        {"byte_burst": 100},
        {"max_message_bytes": 8},
        {"message_burst": 0.5},
        {"max_seq_jump": 0},
        {"hello_timeout_s": 0},
        {"error_burst": -1},
    ):
        with pytest.raises(ValueError):
            SessionLimits(**bad)  # type: ignore[arg-type]


def test_a_verifier_that_breaks_does_not_raise() -> None:
    def broken(token: str) -> Claims:
        raise RuntimeError("boom")

    s = Session(LIMITS, 0.0, broken)
    acts = s.receive(encode(Hello(token="x")), 0.0)
    assert codes(acts) == [ErrorCode.INTERNAL]
    assert closes(acts)[0].code == CloseCode.INTERNAL

    def refuses(token: str) -> Claims:
        raise AuthError("nope")

    s2 = Session(LIMITS, 0.0, refuses)
    assert codes(s2.receive(encode(Hello(token="x")), 0.0)) == [ErrorCode.AUTH_FAILED]


# --- properties ---------------------------------------------------------------------------

frames = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=8),
    st.builds(
        lambda v: msgpack.packb(v),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(),
            lambda c: st.lists(c, max_size=5),
            max_leaves=12,
        ),
    ),
    st.builds(
        lambda seq, x, y: encode(Input(seq, x, y)),
        st.integers(0, 2**32 - 1),
        st.floats(-2, 2),
        st.floats(-2, 2),
    ),
    st.just(encode(Hello(token="junk"))),
    st.just(encode(Ping(1))),
)


@settings(max_examples=100, deadline=None)
@given(
    items=st.lists(st.tuples(frames, st.floats(0, 0.05)), max_size=40),
    dev=st.booleans(),
)
def test_arbitrary_frames_never_raise_and_close_is_final(
    items: list[tuple[bytes | str, float]], dev: bool
) -> None:
    s = Session(SessionLimits(error_burst=5), 0.0, verifier(), dev=dev)
    now = 0.0
    closed = False
    for data, dt in items:
        now += dt
        acts = s.receive(data, now)
        if s.state is State.JOINING:
            s.joined(1, 2)
        if closed:
            assert acts == []
        for a in acts[:-1]:
            assert not isinstance(a, Close)
        for a in acts:
            if isinstance(a, Send):
                decode_server(a.data)  # everything sent is a valid server message
        closed = closed or bool(closes(acts))
    assert closed == (s.state is State.CLOSING)


@settings(max_examples=60, deadline=None)
@given(
    arrivals=st.lists(st.tuples(st.floats(0, 0.2), st.integers(1, 600)), min_size=1, max_size=80),
    rate=st.floats(1, 50),
    burst=st.integers(1, 20),
)
def test_rate_limit_never_admits_more_than_the_bucket_allows(
    arrivals: list[tuple[float, int]], rate: float, burst: int
) -> None:
    limits = SessionLimits(
        messages_per_s=rate,
        message_burst=burst,
        bytes_per_s=1000,
        byte_burst=4096,
        error_burst=10_000,
    )
    s = Session(limits, 0.0, None, dev=True)
    hello = encode(Hello())
    assert s.receive(hello, 0.0) == [Join(None, "", "", "")]
    s.joined(1, 2)
    now = 0.0
    admitted, admitted_bytes = 1, len(hello)
    for dt, size in arrivals:
        now += dt
        data = encode(Message("m", "x" * size))
        acts = s.receive(data, now)
        if not codes(acts):
            admitted += 1
            admitted_bytes += len(data)
        assert admitted <= burst + rate * now + 1e-6
        assert admitted_bytes <= 4096 + 1000 * now + 1e-6
