import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shardworld.zone.zone import InputBuffer


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(["drop_newest", "drop_oldest"]),
    st.integers(1, 12),
    st.lists(st.tuples(st.booleans(), st.integers(0, 20)), max_size=30),
)
def test_ring_matches_a_list_model(policy: str, size: int, ops: list[tuple[bool, int]]) -> None:
    buf = InputBuffer(size, policy)
    model: list[int] = []
    dropped = 0
    n = 0
    for single, k in ops:
        batch = list(range(n + 1, n + 1 + (1 if single else k)))
        n += len(batch)
        if single:
            buf.push(batch[0], batch[0], 0.0, 0.0)
        else:
            buf.push_many(np.array(batch, np.uint64), np.array(batch), np.zeros((len(batch), 2)))
        for v in batch:
            if len(model) < size:
                model.append(v)
            elif policy == "drop_oldest":
                model.pop(0)
                model.append(v)
                dropped += 1
            else:
                dropped += 1
        if not single and k % 3 == 0:
            ids, seq, _, _ = buf.drain()
            assert list(ids) == model and list(seq) == model
            model = []
    ids, _, _, _ = buf.drain()
    assert list(ids) == model
    assert buf.dropped == dropped
