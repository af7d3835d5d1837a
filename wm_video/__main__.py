"""``python -m wm_video`` is the same as the ``wm-video`` command."""

from wm_video.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
