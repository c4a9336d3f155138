"""Presence: online while a user has a connection on any live server, offline after a grace.

:mod:`chatd.presence.tracker` turns local connection counts into global transitions through
the bus's registry; the service decides who is told (the user's followers).
"""

from chatd.presence.tracker import PresenceTracker

__all__ = ["PresenceTracker"]
