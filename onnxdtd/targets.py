"""Which classes an explanation is for, and the initial relevance put on the model output for them."""
from __future__ import annotations

import numpy as np

from .errors import ConfigError, TargetError

INIT_MODES = ("logit", "one")


def is_multi(target) -> bool:
    """Whether `target` asks for several classes per sample: "all", or an (N, T) array of classes."""
    if isinstance(target, str):
        return target == "all"
    try:
        return np.ndim(target) == 2
    except ValueError:  # ragged rows: a table, rejected with its reason by class_table
        return True


def class_indices(target, logits: np.ndarray) -> np.ndarray:
    """One class index per sample, validated against the number of outputs: None is each sample's
    argmax, an int is shared, a sequence gives one per sample."""
    n, k = logits.shape
    if target is None:
        return logits.argmax(axis=1)
    if isinstance(target, str):
        raise _bad_name(target)
    t = _integers(target)
    t = np.broadcast_to(t, (n,)) if t.ndim == 0 or t.shape == (n,) else None
    if t is None:
        raise TargetError(f"target must be an int, {n} ints (one per sample), 'all' or an (N, T) array of classes, "
                          f"got shape {np.shape(target)}")
    return _in_range(t, k).copy()


def class_table(target, logits: np.ndarray) -> np.ndarray:
    """(N, T) class indices: every class for "all", else the given rows (T classes per sample)."""
    n, k = logits.shape
    if isinstance(target, str):
        if target != "all":
            raise _bad_name(target)
        return np.broadcast_to(np.arange(k), (n, k)).copy()
    t = _integers(target)
    if t.shape[0] != n or t.shape[1] == 0:
        raise TargetError(f"a table of targets must have one non-empty row per sample ({n}), got shape {t.shape}")
    return _in_range(t, k).copy()


def one_hot(logits: np.ndarray, table: np.ndarray, init: str | np.ndarray, dtype: np.dtype) -> np.ndarray:
    """(N, T, K) initial relevance: per sample and target, the target's logit (init="logit") or 1
    (init="one") at the target and 0 elsewhere; an array `init` of the output's shape is used as given."""
    n, k = logits.shape
    if not isinstance(init, str):
        given = np.asarray(init)
        if not np.issubdtype(given.dtype, np.floating) or given.size != n * k or len(given) != n:
            raise ConfigError(f"init must be one of {INIT_MODES} or a float array of the output's shape "
                              f"({n}, {k}), got {given.dtype} {given.shape}")
        if not np.all(np.isfinite(given)):
            raise ConfigError("init contains NaN or Inf")
        return given.reshape(n, 1, k).astype(dtype)
    if init not in INIT_MODES:
        raise ConfigError(f"init must be one of {INIT_MODES} or an array of the output's shape, got {init!r}")
    start = np.zeros((n, table.shape[1], k), dtype)
    rows, cols = np.arange(n)[:, None], np.arange(table.shape[1])[None, :]
    start[rows, cols, table] = logits[rows, table] if init == "logit" else 1.0
    return start


def _bad_name(target: str) -> TargetError:
    return TargetError(f"target must be None, an int, one int per sample, 'all' or (N, T) ints, got {target!r}")


def _integers(target) -> np.ndarray:
    """`target` as int64, rejecting non-integral values."""
    try:
        t = np.asarray(target)
    except ValueError as exc:  # ragged rows
        raise TargetError(f"the rows of a table of targets must have the same length, got {target!r}") from exc
    if not (np.issubdtype(t.dtype, np.integer) or (t.dtype.kind == "f" and np.all(t == np.round(t)))):
        raise TargetError(f"target must be integral class indices, got {target!r}")
    return t.astype(np.int64)


def _in_range(t: np.ndarray, k: int) -> np.ndarray:
    if np.any((t < 0) | (t >= k)):
        raise TargetError(f"target {t.tolist()} out of range: the model has {k} outputs (0..{k - 1})")
    return t
