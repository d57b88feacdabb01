"""The one decision of what a frame's result is: a verified fix, a tracked fix, a retrieval-only fix, or no fix.

Every path that produces a fix — the tracker (node, replay), ``mobilegeo localize`` and the demo — asks
:func:`decide_status`, so the rule a flight controller relies on is written once:

* **verified**: this frame was registered on the map and passed verification (refine.py), unambiguously.
* **tracked**: this frame was not registered, but its position is propagated frame to frame from a verified
  keyframe and the propagated 1-sigma is still within ``tracker.max_track_sigma_m``.
* **retrieval**: only the tile retrieval located the frame (tens of metres). Published only when the user asked for
  it: ``refine.enabled: false`` (retrieval-only mode) or ``refine.fallback: retrieval``.
* **no_fix**: anything else. In particular, under ``refine.fallback: no_fix`` (the default) nothing that was neither
  verified nor tracked from a verified frame is ever a fix, and two verified candidates that disagree (ambiguous) are
  no fix under every fallback unless a live track from an earlier verified keyframe says where the drone is.
"""

from __future__ import annotations

from enum import Enum


class FixStatus(str, Enum):
    """Status of one frame's result (a ``str`` so it prints and serialises as its value)."""

    VERIFIED = "verified"
    TRACKED = "tracked"
    RETRIEVAL = "retrieval"
    NO_FIX = "no_fix"

    @property
    def is_fix(self) -> bool:
        """Does this status carry a position to publish?"""
        return self is not FixStatus.NO_FIX

    def __str__(self) -> str:
        return self.value


class RegistrationOutcome(str, Enum):
    """Outcome of the map registration attempted on a frame (``NONE``: none attempted)."""

    NONE = "none"
    VERIFIED = "verified"
    AMBIGUOUS = "ambiguous"
    UNVERIFIED = "unverified"


def decide_status(registration: RegistrationOutcome, tracked: bool, retrieval_fix: bool, refine_enabled: bool,
                  fallback: str) -> FixStatus:
    """The status of a frame's result.

    Args:
        registration: what the map registration of this frame gave (``NONE`` when no registration ran).
        tracked: a track from a verified keyframe covers this frame within its sigma limit.
        retrieval_fix: the retrieval stage produced a position (its own score/ambiguity rules passed).
        refine_enabled: ``refine.enabled`` (false: retrieval-only mode, the user asked for tile-level fixes).
        fallback: ``refine.fallback`` (``no_fix`` | ``retrieval``).
    """
    if registration is RegistrationOutcome.VERIFIED:
        return FixStatus.VERIFIED
    if tracked:
        return FixStatus.TRACKED
    if registration is RegistrationOutcome.AMBIGUOUS:
        return FixStatus.NO_FIX
    if retrieval_fix and (not refine_enabled or fallback == "retrieval"):
        return FixStatus.RETRIEVAL
    return FixStatus.NO_FIX


__all__ = ["FixStatus", "RegistrationOutcome", "decide_status"]
