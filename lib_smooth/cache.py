"""Cache of DDIM inversions, so re-rendering with another frame count or guidance does not invert again.

The key covers everything the inverted latent depends on: the preprocessed image's bytes, the model
identity, the LoRA set and weights, and the inversion settings. Entries live in memory (least
recently used dropped first) and, when a folder is given, also on disk as .pt files.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

import torch


def cache_key(**parts: Any) -> str:
    """sha256 of the parts (bytes hashed directly, the rest as sorted JSON)."""
    digest = hashlib.sha256()
    for name in sorted(parts):
        value = parts[name]
        digest.update(name.encode())
        digest.update(value if isinstance(value, bytes) else json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class InversionCache:
    def __init__(self, max_entries: int = 32, folder: Optional[str | Path] = None):
        self.max_entries = max_entries
        self.folder = Path(folder) if folder else None
        self._memory: "OrderedDict[str, Any]" = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: str) -> Optional[Any]:
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        if self.folder and (self.folder / f"{key}.pt").is_file():
            value = torch.load(self.folder / f"{key}.pt", map_location="cpu", weights_only=True)
            self._remember(key, value)
            self.hits += 1
            return value
        self.misses += 1
        return None

    def put(self, key: str, value: Any) -> None:
        self._remember(key, value)
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)
            torch.save(value, self.folder / f"{key}.pt")

    def _remember(self, key: str, value: Any) -> None:
        self._memory[key] = value
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)
