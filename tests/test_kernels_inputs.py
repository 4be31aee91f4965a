import numpy as np

from shardworld.kernels import inputs as k
from shardworld.kernels._jit import py_func


def reference(rows, seq, intent, actions, col_intent, col_seq, col_actions):  # type: ignore[no-untyped-def]
    outcome = []
    for r, s, it, a in zip(rows, seq, intent, actions, strict=True):
        if r < 0:
            outcome.append(k.UNKNOWN_ENTITY)
            continue
        if s <= col_seq[r]:
            outcome.append(k.OUT_OF_ORDER)
            continue
        if not np.all(np.isfinite(it)):
            outcome.append(k.NOT_A_FINITE_INTENT)
            continue
        v = it.astype(np.float64)
        m = float(np.hypot(v[0], v[1]))
        if m > 1:
            v = v / m
        col_intent[r] = v
        col_seq[r] = s
        col_actions[r] = a
        outcome.append(k.APPLIED)
    return np.array(outcome, np.uint8)


def run(fn, rows, seq, intent, actions, n):  # type: ignore[no-untyped-def]
    ci, cs, ca = np.zeros((n, 2), np.float32), np.zeros(n, np.uint32), np.zeros(n, np.uint32)
    out = np.zeros(len(rows), np.uint8)
    fn(rows, seq, intent, actions, ci, cs, ca, out)
    return out, ci, cs, ca


def test_matches_reference_on_random_batches() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        b, n = 200, 30
        rows = rng.integers(-2, n, b).astype(np.int32)
        seq = rng.integers(0, 50, b).astype(np.uint32)
        intent = rng.uniform(-5, 5, (b, 2)).astype(np.float32)
        intent[rng.random(b) < 0.05, 0] = np.nan
        actions = rng.integers(0, 8, b).astype(np.uint32)
        got = run(k.apply_inputs, rows, seq, intent, actions, n)
        ci, cs, ca = np.zeros((n, 2), np.float32), np.zeros(n, np.uint32), np.zeros(n, np.uint32)
        want = reference(rows, seq, intent, actions, ci, cs, ca)
        np.testing.assert_array_equal(got[0], want)
        np.testing.assert_allclose(got[1], ci, atol=1e-6)
        np.testing.assert_array_equal(got[2], cs)
        np.testing.assert_array_equal(got[3], ca)
        alt = run(py_func(k.apply_inputs), rows, seq, intent, actions, n)
        for x, y in zip(got, alt, strict=True):
            np.testing.assert_allclose(x, y, atol=1e-6)


def test_intent_beyond_max_is_clamped_to_unit_length() -> None:
    out, ci, _, _ = run(
        k.apply_inputs,
        np.array([0], np.int32),
        np.array([1], np.uint32),
        np.array([[300.0, 400.0]], np.float32),
        np.array([0], np.uint32),
        1,
    )
    assert out[0] == k.APPLIED
    np.testing.assert_allclose(ci[0], [0.6, 0.8], atol=1e-6)


def test_replayed_and_reordered_inputs_are_refused() -> None:
    rows = np.array([0, 0, 0], np.int32)
    seq = np.array([5, 5, 4], np.uint32)
    intent = np.array([[1, 0], [0, 1], [0, -1]], np.float32)
    out, ci, cs, _ = run(k.apply_inputs, rows, seq, intent, np.zeros(3, np.uint32), 1)
    assert list(out) == [k.APPLIED, k.OUT_OF_ORDER, k.OUT_OF_ORDER]
    assert cs[0] == 5 and list(ci[0]) == [1, 0]
