"""Run ids and stored run descriptions: one hash and one JSON form for sweep configs and library runs alike.

A run id is 16 hex digits of the SHA-256 of the run's description as compact canonical JSON (sorted
keys); the stored `config_json` is the same description as canonical JSON with the default separators.
Standard library only (the worker path).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def canonical_json(description: Mapping[str, Any]) -> str:
    """A run description as canonical JSON (sorted keys; values JSON cannot hold as their str): config_json."""
    return json.dumps(description, sort_keys=True, default=str)


def run_id_of(description: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the description's compact canonical JSON: the run's id."""
    blob = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
