"""Which key plays which button of a world: derived from the action names, overridable by a file.

A world only knows its action names (from the checkpoint). The keymap is data, found in this
order, the first that applies winning for each button:

1. ``--keymap FILE`` (``{"key name": "button"}``): used as is, nothing else is added;
2. the keymap of the dataset the model was trained on (``meta/wm_video.json``), when its
   buttons are the model's;
3. the keys of the built-in worlds for buttons of the same name (ViZDoom: W/S forward/back,
   A/D strafe, ←/→ turn, Space attack, E use; Atari: W/A/S/D and Space; VPT's Minecraft names);
4. a button named like a key (``"w"``, ``"space"``) gets that key;
5. any button still without a key gets the next free one of ``SPARE_KEYS`` (listed at start).

Key names are pygame's (``pygame.key.name`` spelling).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from wm_video.actions import ActionSpace, load_keymap
from wm_video.play.keys import resolve_key

#: The play commands' keys (pygame key names); a derived keymap never gives them to a button.
COMMAND_KEYS: dict[str, str] = {
    "escape": "quit",
    "return": "reset",
    "p": "pause",
    "backspace": "rewind",
    "f12": "screenshot",
    "f5": "record",
    "h": "hud",
    "tab": "resync",
}

#: Button name → key for the worlds wm-video knows (sources/vizdoom.py, sources/atari.py, data/vpt.py).
KNOWN_BUTTON_KEYS: dict[str, str] = {
    # ViZDoom (the default world)
    "forward": "w",
    "back": "s",
    "strafe_left": "a",
    "strafe_right": "d",
    "turn_left": "left",
    "turn_right": "right",
    "attack": "space",
    "use": "e",
    # Atari
    "up": "up",
    "down": "down",
    "fire": "space",
    # VPT (Minecraft)
    "jump": "space",
    "sneak": "left shift",
    "sprint": "left ctrl",
    "inventory": "e",
    "drop": "q",
    "swap_hands": "f",
    **{f"hotbar.{i}": str(i) for i in range(1, 10)},
}
#: Keys handed to buttons nothing else binds, in order (none of them is a play command).
SPARE_KEYS: tuple[str, ...] = (
    *"zxcvbnmqfgtyuiojkl",
    *(str(i) for i in range(1, 10)),
)


def derive_keymap(
    space: ActionSpace,
    *,
    dataset_keymap: Mapping[str, str] | None = None,
    path: Path | None = None,
    reserved: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """The keymap ``{key name: button}`` for ``space``'s buttons (see the module docstring for the order).

    ``reserved`` key names are never given out (the play commands' keys); a keymap file may still
    use them, and then that key plays the button instead of running the command.
    """
    if path is not None:
        return load_keymap(path, space)
    keymap: dict[str, str] = {}
    bound: set[str] = set()
    codes: set[int] = {resolve_key(name) for name in reserved}

    def bind(key: str, button: str) -> None:
        code = resolve_key(key)
        if button in bound or code in codes:
            return
        keymap[key] = button
        bound.add(button)
        codes.add(code)

    if dataset_keymap:
        for key, button in dataset_keymap.items():
            if button in space.buttons:
                bind(key, button)
    for button in space.buttons:
        if button in KNOWN_BUTTON_KEYS:
            bind(KNOWN_BUTTON_KEYS[button], button)
    for button in space.buttons:
        if button not in bound and _is_key_name(button):
            bind(button, button)
    spare = iter(SPARE_KEYS)
    for button in space.buttons:
        if button in bound:
            continue
        for key in spare:  # out of spare keys: the rest stay unbound (a keymap file can bind them)
            bind(key, button)
            if button in bound:
                break
    return keymap


def _is_key_name(name: str) -> bool:
    try:
        resolve_key(name)
    except Exception:
        return False
    return True
