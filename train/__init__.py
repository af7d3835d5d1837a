"""Training programs (installed as ``wm_video.train``): thin programs over the library."""
