"""The heads-up display: a few lines of text over the picture (H toggles it).

Design choices:
- Plain text in pygame's default font over a translucent box at the window's top-left, drawn
  after the frame and before the flip. It reports what a player needs to judge the world:
  frames/s reached and the target, the model's milliseconds per frame, the frame count, the keys
  held, the PSNR against the real engine in shadow mode, and the state (paused, recording).
- Messages (screenshot saved, rewound …) show for a few seconds; an error stays until the
  player resets or resumes. Both show even when the HUD is hidden.
- Rendered text is cached per line, so an unchanged HUD costs a few blits a frame.
"""

from __future__ import annotations

import time

import pygame

WHITE = (240, 240, 240)
YELLOW = (255, 220, 90)
RED = (255, 90, 80)


class Hud:
    """Draws lines of text over the window; ``show`` toggles the regular lines."""

    def __init__(self, *, font_size: int = 18, show: bool = True, message_seconds: float = 3.0) -> None:
        pygame.font.init()
        self.font = pygame.font.Font(None, font_size)
        self.show = show
        self.message_seconds = message_seconds
        self.error: str | None = None
        self._message: tuple[str, float] | None = None
        self._cache: dict[tuple[str, tuple[int, int, int]], pygame.Surface] = {}

    def say(self, text: str) -> None:
        """Show ``text`` for a few seconds."""
        self._message = (text, time.monotonic() + self.message_seconds)

    def _render(self, text: str, colour: tuple[int, int, int]) -> pygame.Surface:
        key = (text, colour)
        surface = self._cache.get(key)
        if surface is None:
            if len(self._cache) > 256:  # the frame counter changes every frame: keep the cache small
                self._cache.clear()
            surface = self.font.render(text, True, colour)
            self._cache[key] = surface
        return surface

    def draw(self, screen: pygame.Surface, lines: list[str]) -> None:
        """Draw ``lines`` (when shown), then the message and the error, at the top-left of ``screen``."""
        rows: list[tuple[str, tuple[int, int, int]]] = [(line, WHITE) for line in lines] if self.show else []
        if self._message is not None:
            text, until = self._message
            if time.monotonic() < until:
                rows.append((text, YELLOW))
            else:
                self._message = None
        if self.error is not None:
            rows.append((self.error, RED))
        if not rows:
            return
        surfaces = [self._render(text, colour) for text, colour in rows]
        width = max(s.get_width() for s in surfaces) + 12
        height = sum(s.get_height() + 2 for s in surfaces) + 8
        box = pygame.Surface((min(width, screen.get_width()), min(height, screen.get_height())), pygame.SRCALPHA)
        box.fill((0, 0, 0, 150))
        screen.blit(box, (0, 0))
        y = 4
        for surface in surfaces:
            screen.blit(surface, (6, y))
            y += surface.get_height() + 2
