"""Keras' loader warns, without raising, when it leaves layers freshly initialised: a load that
catches its warnings replays the others and reports those (`native`, `nested`)."""

from __future__ import annotations

import warnings

# How Keras' loader says it left layers freshly initialised without raising (Keras >= 3.14).
KERAS_SKIPPED_CONTAINER = "Skipping nested container"


def replay_warnings(caught, *, keep_skipped: bool) -> list[str]:
    """Re-issue Keras' warnings from a load (skipped containers only if ``keep_skipped``);
    return the skipped containers' one-line descriptions."""
    skipped = []
    for w in caught:
        is_skip = str(w.message).startswith(KERAS_SKIPPED_CONTAINER)
        if is_skip:
            skipped.append(str(w.message).split(":")[0])
        if keep_skipped or not is_skip:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return skipped
