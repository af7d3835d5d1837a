"""wm-video: action-conditioned video world models, from game footage to a playable model.

The data takes one road: ``sources`` (real engines and policies) → ``data`` (episodes on disk,
validation, the training cache) → models → engine → ``play`` and ``eval``.
"""

__version__ = "0.1.0"
