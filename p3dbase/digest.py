"""One short key for a set of settings: what caches, stores and output folders are tied to."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def settings_key(settings: Any) -> str:
    """16 hex digits of the SHA-256 of `settings` as sorted-key JSON: equal settings, equal keys, in any
    process and key order (a flow store's settings, an engine's view plan, a features run's)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
