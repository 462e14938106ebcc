"""Progress bars for long phases, shown only when the caller asks (on a terminal)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

Item = TypeVar("Item")


def progress(items: list[Item], description: str, show: bool) -> Iterable[Item]:
    """Iterate over `items`, with a tqdm bar on standard error when `show` is true."""
    if not show:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="kernel", leave=False)
