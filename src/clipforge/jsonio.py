"""Strict JSON text: what clipforge writes for people and programs to read is always valid JSON.

Python's `json.dumps` writes NaN and inf as the bare words `NaN` / `Infinity`, which strict readers (browsers,
`jq`, most languages) refuse; `json_text` writes them as null instead and logs where they were.
"""

from __future__ import annotations

import json
import logging
import math

log = logging.getLogger(__name__)


def _finite_or_null(data, where: str, found: list[str]):
    """`data` with every NaN / inf float replaced by None (JSON null); `found` collects where they were."""
    if isinstance(data, float) and not math.isfinite(data):
        found.append(f"{where}={data}")
        return None
    if isinstance(data, dict):
        return {k: _finite_or_null(v, f"{where}.{k}" if where else str(k), found) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite_or_null(v, f"{where}[{i}]", found) for i, v in enumerate(data)]
    return data


def json_text(data, **dumps_kwargs) -> str:
    """`json.dumps(data)` that is always valid JSON: NaN and inf (which Python writes as the bare words NaN and
    Infinity, rejected by every strict JSON reader) become null, with a warning saying where they were.

    NaN reaches reports when a model's weights or a metric are not finite; one strict writer for every JSON file a
    user reads (CLI output, evaluation reports, embedding indexes, training summaries) keeps them all parseable."""
    try:
        return json.dumps(data, allow_nan=False, **dumps_kwargs)
    except ValueError:
        found: list[str] = []
        clean = _finite_or_null(data, "", found)
        if not found:
            raise
        log.warning(
            "%d non-finite number(s) written as null (first: %s): a model output or metric is not finite (the "
            "weights may hold NaN/inf)",
            len(found),
            found[0],
        )
        return json.dumps(clean, allow_nan=False, **dumps_kwargs)
