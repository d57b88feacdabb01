"""The one status decision (mobilegeo_ros/estimator/status.py), every branch by hand. Light imports on purpose: this
file is what the mutation run of status.py executes (docs/testing.md)."""

import pytest

from mobilegeo_ros.estimator.status import FixStatus, RegistrationOutcome, decide_status


@pytest.mark.parametrize("fallback", ["no_fix", "retrieval"])
def test_status_decision_table(fallback):
    V, A, U, N = (RegistrationOutcome.VERIFIED, RegistrationOutcome.AMBIGUOUS, RegistrationOutcome.UNVERIFIED,
                  RegistrationOutcome.NONE)
    # verified registration wins whatever else holds
    for tracked in (False, True):
        for retr in (False, True):
            assert decide_status(V, tracked, retr, True, fallback) is FixStatus.VERIFIED
    # a live track from a verified keyframe covers frames without (or with a failed) registration
    for outcome in (N, U, A):
        assert decide_status(outcome, True, False, True, fallback) is FixStatus.TRACKED
    # ambiguous registrations are no fix under every fallback
    assert decide_status(A, False, True, True, fallback) is FixStatus.NO_FIX
    # an unverified frame with a retrieval position: a fix only when the user asked for retrieval fixes
    expected = FixStatus.RETRIEVAL if fallback == "retrieval" else FixStatus.NO_FIX
    assert decide_status(U, False, True, True, fallback) is expected
    assert decide_status(N, False, True, True, fallback) is expected
    # retrieval-only mode (refine disabled) publishes retrieval fixes
    assert decide_status(N, False, True, False, fallback) is FixStatus.RETRIEVAL
    # nothing at all: no fix
    assert decide_status(U, False, False, True, fallback) is FixStatus.NO_FIX
    assert not FixStatus.NO_FIX.is_fix and all(s.is_fix for s in FixStatus if s is not FixStatus.NO_FIX)


def test_status_values_are_what_the_node_and_the_json_say():
    assert [s.value for s in FixStatus] == ["verified", "tracked", "retrieval", "no_fix"]
    assert str(FixStatus.TRACKED) == "tracked" and FixStatus("no_fix") is FixStatus.NO_FIX
