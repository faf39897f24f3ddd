"""Chain parents of a store job's keys (no vLLM, no GPU)."""

from __future__ import annotations

from connector.chain import chain_parents, parent_keys


def k(n: int, group: int = 0) -> bytes:
    return n.to_bytes(8, "big") + group.to_bytes(4, "big")


def test_a_key_right_after_its_predecessor_in_the_same_group_has_it_as_parent() -> None:
    keys = [k(1), k(2, group=1), k(3), k(4, group=1), k(5), k(7)]
    positions = [4, 4, 5, 5, 7, 8]
    parents = chain_parents(keys, positions, lambda key: key[:-4].hex())
    # 3 follows 1 in group 0 and 4 follows 2 in group 1; 1 and 2 start the job; 5 skips position 6; 7 follows 5.
    assert parents == [None, None, k(1)[:-4].hex(), k(2)[:-4].hex(), None, k(5)[:-4].hex()]
    # Unknown positions (-1) never give a parent.
    assert chain_parents([k(1), k(2)], [-1, -1], lambda key: "x") == [None, None]
    assert chain_parents([k(1), k(2)], [0, 0], lambda key: "x") == [None, None]


class Context:
    """vLLM's ReqContext as far as parents go: the end-token position of every offload key of the request."""

    def __init__(self, positions: dict[bytes, int]) -> None:
        self._offload_key_positions = positions


def test_the_first_key_of_a_job_gets_its_parent_from_the_request() -> None:
    # A request of chunks 1, 2, 3 (group 0, 64 tokens each) and 9 (group 1, 128 tokens); the job stores 3 and 9
    # (1, 2 were stored by an earlier request, or an earlier step of this one).
    ctx = Context({k(1): 64, k(2): 128, k(3): 192, k(8, group=1): 128, k(9, group=1): 256})
    tokens = {0: 64, 1: 128}
    known = parent_keys([k(3), k(9, group=1)], ctx, tokens)
    assert known == [k(2), k(8, group=1)]
    assert chain_parents([k(3), k(9, group=1)], [2, 1], lambda key: key[:-4].hex(), known) == [
        k(2)[:-4].hex(),
        k(8)[:-4].hex(),
    ]
    # The chain's first chunk has none; an unknown key, a position off the chunk grid, and a context without
    # the positions (another vLLM) give None, and the job-local inference still applies.
    ctx._offload_key_positions[k(4)] = 200
    assert parent_keys([k(1), k(5), k(4)], ctx, tokens) == [None, None, None]
    assert parent_keys([k(3)], object(), tokens) == [None]
    assert chain_parents([k(2), k(3)], [1, 2], lambda key: key[:-4].hex(), [None, None]) == [
        None,
        k(2)[:-4].hex(),
    ]


class GrowingContext(Context):
    """With vLLM's per-request scratch space, where the reverse index is kept between calls."""

    def __init__(self, positions: dict[bytes, int]) -> None:
        super().__init__(positions)
        self.state: dict[type, object] = {}

    def set_state(self, value: object) -> None:
        self.state[type(value)] = value

    def get_state(self, cls: type) -> object:
        return self.state.get(cls)


def test_the_reverse_index_follows_a_request_that_grows() -> None:
    # A prompt of 3 chunks, then decode adds chunks one at a time (a prepare_store each): every new chunk finds
    # the one before it, also after the index was built and kept in the request's context.
    ctx = GrowingContext({k(n): 64 * n for n in range(1, 4)})
    assert parent_keys([k(1), k(2), k(3)], ctx, {0: 64}) == [None, k(1), k(2)]
    assert len(ctx.state) == 1
    for n in range(4, 8):
        ctx._offload_key_positions[k(n)] = 64 * n
        assert parent_keys([k(n)], ctx, {0: 64}) == [k(n - 1)]
    assert parent_keys([k(5), k(7)], ctx, {0: 64}) == [k(4), k(6)]


def test_a_request_keeps_the_time_it_was_first_seen() -> None:
    """Every journal record of a request carries one time (kept in its context); another request has its own; a
    context without per-request state (another vLLM) gets the time of the call."""
    import time

    from connector.chain import request_time

    first, second = GrowingContext({}), GrowingContext({})
    stamp = request_time(first)
    time.sleep(0.01)
    assert request_time(first) == stamp and isinstance(stamp, float)
    assert request_time(second) > stamp
    before = time.time()
    assert before <= request_time(object()) <= time.time()
    # Beside the reverse index in the same context: each state has its own type.
    parent_keys([k(1), k(2)], first, {0: 64})
    assert request_time(first) == stamp
