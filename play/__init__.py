"""The pygame clients (installed as ``wm_video.play``): recording real games, and later play.

Only this package imports pygame; the library and the models never do.
"""
