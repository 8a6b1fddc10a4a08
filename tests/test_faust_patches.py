"""The commit rule that replaces Faust's: never commit past an offset that is not done."""

from hypothesis import given
from hypothesis import strategies as st

from flead_app.faust_patches import next_commit_offset


def test_faust_s_off_by_one_case_commits_nothing():
    # committed at 2 (offsets 0 and 1 done); 3, 4, 5 acknowledged while 2 is still in a stream:
    # Faust commits 6 here, losing offset 2 if the worker then dies
    assert next_commit_offset([3, 4, 5], committed=2) is None
    assert next_commit_offset([2, 3, 4, 5], committed=2) == 6


def test_a_committed_offset_of_zero_is_a_real_anchor():
    assert next_commit_offset([1, 2], committed=0) is None
    assert next_commit_offset([0, 1, 2], committed=0) == 3


def test_without_a_committed_offset_messages_in_flight_cut_the_run():
    assert next_commit_offset([0, 1, 2, 4], committed=None, in_flight=[3]) == 3
    assert next_commit_offset([0, 1, 2], committed=None, in_flight=[1]) == 1
    assert next_commit_offset([5, 6], committed=None, in_flight=[5]) is None
    assert next_commit_offset([], committed=None) is None


@given(
    done=st.sets(st.integers(0, 60)),
    committed=st.one_of(st.none(), st.integers(0, 60)),
    in_flight=st.sets(st.integers(0, 60)),
)
def test_never_commits_past_an_offset_that_is_not_done(done, committed, in_flight):
    """Offsets are done when acknowledged (or already committed); whatever the rule commits, every
    offset below it is done, and it never moves a commit backwards."""
    in_flight -= done
    acked = sorted(o for o in done if committed is None or o >= committed)
    new = next_commit_offset(acked, committed, in_flight)
    if new is None:
        return
    start = committed if committed is not None else acked[0]
    assert all(o in done for o in range(start, new))
    assert not any(start <= o < new for o in in_flight)
    assert committed is None or new > committed
