"""The placement policy, alone: no I/O, no clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.placement import RESERVE_PER_CONFERENCE, Candidate, describe, has_room, least_loaded, place_participant


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


def placed(home: str, hosting: dict[str, int], pool: list[Candidate], linked: set[frozenset[str]] | None = None
           ) -> str | None:
    chosen = place_participant(home, hosting, linked or set(), pool)
    return chosen.daemon_id if chosen else None


def test_a_participant_goes_where_its_conference_is_while_there_is_room() -> None:
    # (home, participants per daemon, pool, linked pairs) -> where the next one goes
    table = [
        ("a", {}, [c("a", 0, 10), c("b", 0, 10)], set(), "a"),                      # the first: home
        ("a", {"a": 3}, [c("a", 3, 10), c("b", 0, 10)], set(), "a"),                # home has room
        ("a", {"a": 10}, [c("a", 10, 10), c("b", 0, 10)], set(), None),             # home full, no end for a link
        ("a", {}, [c("a", 0, 1), c("b", 0, 1)], set(), "a"),                        # nowhere to spread: the last one
        ("a", {"a": 1}, [c("a", 1, 1), c("b", 0, 1)], set(), None),
        ("a", {"a": 9}, [c("a", 9, 10)], set(), "a"),                               # alone: fills to the last
        ("a", {"a": 8}, [c("a", 8, 10), c("b", 0, 10)], set(), "a"),                # home keeps 1 for a link
        ("a", {"a": 9}, [c("a", 9, 10), c("b", 0, 10)], set(), "b"),                # then spreads: a's last is the link
        ("a", {"a": 9, "b": 4}, [c("a", 10, 10), c("b", 5, 10)], {frozenset("ab")}, "b"),  # b hosts and is linked
        ("a", {"a": 2, "b": 5}, [c("a", 3, 10), c("b", 6, 10)], {frozenset("ab")}, "b"),   # most participants first
        ("a", {"a": 5, "b": 5}, [c("a", 6, 10), c("b", 6, 10)], {frozenset("ab")}, "a"),   # ties: home
        ("a", {"a": 9}, [c("a", 9, 10), c("b", 8, 10), c("c", 2, 10)], set(), "c"),        # least loaded spreads
        ("a", {"a": 9}, [c("a", 9, 10), c("b", 0, 10, draining=True)], set(), "a"),        # draining never: a fills
        ("a", {"a": 9, "b": 9}, [c("a", 10, 10), c("b", 10, 10), c("c", 0, 10)], {frozenset("ab")}, None),
        ("a", {"a": 9, "b": 8}, [c("a", 9, 10), c("b", 9, 10), c("c", 0, 10)], {frozenset("ab")}, "c"),
        ("gone", {"gone": 3}, [c("b", 0, 10)], set(), None),                         # its daemon is gone: moved first
    ]
    for home, hosting, pool, linked, expected in table:
        assert placed(home, hosting, pool, linked) == expected, (home, hosting, pool, linked)


def test_six_participants_spread_over_three_daemons_of_five_endpoints() -> None:
    # Each daemon keeps an endpoint per other daemon for link ends; links count as endpoints.
    used = {"m0": 0, "m1": 0, "m2": 0}
    hosting: dict[str, int] = {}
    linked: set[frozenset[str]] = set()
    order = []
    for _ in range(6):
        chosen = place_participant("m0", hosting, linked, [c(d, n, 5) for d, n in used.items()])
        assert chosen is not None
        d = chosen.daemon_id
        for other in [h for h in hosting if h != d and frozenset((h, d)) not in linked]:
            linked.add(frozenset((other, d)))
            used[other] += 1
            used[d] += 1
        used[d] += 1
        hosting[d] = hosting.get(d, 0) + 1
        order.append(d)
    assert order == ["m0", "m0", "m0", "m1", "m1", "m2"]
    assert used == {"m0": 5, "m1": 4, "m2": 3}
    # Nowhere left to spread to: the 7th takes a daemon's last endpoint.
    last = place_participant("m0", hosting, linked, [c(d, n, 5) for d, n in used.items()])
    assert last is not None and last.daemon_id == "m1"


def r(daemon_id: str, region: str, endpoints: int = 0, capacity: int = 10) -> Candidate:
    return Candidate(daemon_id, capacity, endpoints, 0, region=region)


def test_a_participant_goes_to_a_daemon_of_its_region_first() -> None:
    # (home, participants per daemon, pool, linked pairs, the participant's region) -> where it goes
    eu, us, us2 = r("eu", "eu-west"), r("us", "us-east"), r("us2", "us-east")
    table = [
        ("eu", {}, [eu, us], set(), "us-east", "us"),                      # the first: near, not home
        ("eu", {"eu": 2}, [r("eu", "eu-west", 2), us], set(), "us-east", "us"),  # the conference spreads near
        ("eu", {"eu": 2}, [r("eu", "eu-west", 2), us], set(), "eu-west", "eu"),
        ("eu", {"eu": 2}, [r("eu", "eu-west", 2), us], set(), "", "eu"),         # no region: where it is
        ("eu", {"eu": 2}, [r("eu", "eu-west", 2), us], set(), "ap-south", "eu"),  # a region no daemon has
        # Of the region, a daemon of the conference before another, however loaded.
        ("eu", {"eu": 1, "us2": 1}, [r("eu", "eu-west", 2), us, r("us2", "us-east", 6)],
         {frozenset(("eu", "us2"))}, "us-east", "us2"),
        # Of the region, the least loaded when the conference is on none of it.
        ("eu", {"eu": 1}, [r("eu", "eu-west", 1), r("us", "us-east", 5), us2], set(), "us-east", "us2"),
        # The region full (its daemon keeps its last endpoint for a link end): where it is.
        ("eu", {"eu": 1}, [r("eu", "eu-west", 1), r("us", "us-east", 9)], set(), "us-east", "eu"),
        # A draining daemon of the region is no choice.
        ("eu", {"eu": 1}, [r("eu", "eu-west", 1), Candidate("us", 10, 0, 0, draining=True, region="us-east")],
         set(), "us-east", "eu"),
    ]
    for home, hosting, pool, linked, region, expected in table:
        chosen = place_participant(home, hosting, linked, pool, region)
        assert (chosen.daemon_id if chosen else None) == expected, (home, hosting, pool, region)
