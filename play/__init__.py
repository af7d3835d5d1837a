"""The pygame clients (installed as ``wm_video.play``): recording real games, and playing generated ones.

Only this package imports pygame; the library and the models never do.
"""

import os

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # no banner on every import
