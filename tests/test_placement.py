"""The placement policy, alone: no I/O, no clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.placement import RESERVE_PER_CONFERENCE, Candidate, describe, has_room, least_loaded


def chosen_id(pool: list[Candidate], **kwargs: int) -> str | None:
    chosen = least_loaded(pool, **kwargs)
    return chosen.daemon_id if chosen else None


def c(
    daemon_id: str, endpoints: int = 0, capacity: int = 100, conferences: int = 0, draining: bool = False
) -> Candidate:
    return Candidate(daemon_id, capacity, endpoints, conferences, draining)


def test_no_candidates_means_no_choice() -> None:
    assert least_loaded([]) is None


def test_lowest_share_of_capacity_wins() -> None:
    assert chosen_id([c("a", 50, 100), c("b", 60, 200)]) == "b"


def test_empty_conferences_spread_by_count() -> None:
    assert chosen_id([c("a", 0, conferences=3), c("b", 0, conferences=2)]) == "b"


def test_conferences_count_with_the_room_they_grow_into() -> None:
    # 10 empty conferences on a weigh more than 5 endpoints in one conference on b.
    assert chosen_id([c("a", 0, conferences=10), c("b", 5, conferences=1)]) == "b"
    assert chosen_id([c("a", 0, conferences=10), c("b", 5, conferences=1)], reserve=0) == "a"


def test_creating_many_conferences_alternates_between_equal_daemons() -> None:
    pool = {"a": c("a"), "b": c("b")}
    placed = []
    for _ in range(6):
        chosen = least_loaded(pool.values())
        assert chosen is not None
        placed.append(chosen.daemon_id)
        pool[chosen.daemon_id] = c(chosen.daemon_id, conferences=chosen.conferences + 1)
    assert placed == ["a", "b"] * 3


def test_ties_go_to_the_smaller_id() -> None:
    assert chosen_id([c("b"), c("a")]) == "a"


def test_full_and_draining_daemons_are_skipped() -> None:
    candidates = [c("a", 100, 100), c("b", 0, draining=True), c("z", 99, 100)]
    assert chosen_id(candidates) == "z"
    assert least_loaded(candidates[:2]) is None


def test_room_for_several_endpoints() -> None:
    assert has_room(c("a", 98, 100), 2) and not has_room(c("a", 99, 100), 2)
    assert chosen_id([c("a", 98, 100), c("b", 199, 200)], endpoints_needed=2) == "a"


def test_reported_load_above_capacity_is_full() -> None:
    assert c("a", 120, 100).free == 0 and not has_room(c("a", 120, 100))


def test_describe_says_why_there_is_no_room() -> None:
    assert describe([c("b", draining=True), c("a", 10, 10)]) == "a: 10 of 10 endpoints in use; b: draining"


candidates = st.lists(
    st.builds(
        Candidate,
        daemon_id=st.text("abcdef", min_size=1, max_size=3),
        capacity=st.integers(1, 1000),
        endpoints=st.integers(0, 1200),
        conferences=st.integers(0, 50),
        draining=st.booleans(),
    ),
    max_size=8,
)


@given(candidates)
def test_choice_has_room_and_no_eligible_daemon_is_less_loaded(pool: list[Candidate]) -> None:
    chosen = least_loaded(pool)
    eligible = [x for x in pool if has_room(x)]
    if chosen is None:
        assert eligible == []
        return
    assert has_room(chosen)
    assert all(chosen.load(RESERVE_PER_CONFERENCE) <= x.load(RESERVE_PER_CONFERENCE) for x in eligible)
