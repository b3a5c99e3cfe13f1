"""Exporter coverage: JAX / Flax models exported with jax2onnx.

The models are committed under tests/frameworks/models/jax/ (made by tests/frameworks/build_jax.py, which
needs JAX; this module does not): ``<name>.onnx`` and ``<name>.npz`` with an input batch ``x`` and
JAX's own output ``y``. Every committed model is checked here: onnxdtd reads it, explains exactly the
output JAX computed, DTD chains conserve the logit, and float32 and float64 backward passes agree.
docs/exporters/jax.md describes the graphs jax2onnx writes and what onnxdtd does with them.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import numpy as np
import pytest

import onnxdtd

# CI points ONNXDTD_COVERAGE_MODELS at models that it has just exported with the real exporter.
MODELS_DIR = Path(os.environ.get("ONNXDTD_COVERAGE_MODELS", Path(__file__).resolve().parent / "models")) / "jax"
NAMES = sorted(p.stem for p in MODELS_DIR.glob("*.onnx"))

# Models whose graphs use an op or a form the core does not support yet: model -> what is missing.
# They take part in test_load only, as a strict xfail on UnsupportedOperatorError: when the core
# learns the op, pytest reports the XPASS as a failure; removing the entry then runs every check.
PENDING = {
    "mlp_silu": "Sigmoid(h) and Mul(h, sigmoid(h)) from nnx.silu: a gated activation, Mul of two activations",
    "cnn_resize_linear": "Resize mode='linear' from jax.image.resize(..., 'bilinear'): linear with positive weights",
}
# Models explained only with strict=False: model -> the op that has no relevance rule.
LENIENT = {"mlp_gelu": "Gelu"}
# Models whose layer table shows shapes that differ from the run-time ones: jax2onnx leaves stale
# value_info (NHWC shapes on tensors its layout pass made NCHW) and onnxdtd's shape inference keeps them.
STALE_SHAPES: dict[str, str] = {}

# Models on which the DTD chains lose or gain relevance at zero denominators far beyond rounding
# (DESIGN.md: conservation holds "up to relevance lost at zero denominators"): model -> mechanism.
NOT_CONSERVED = {
    "resblock": "the residual Add's z-rule sends negative relevance to 44 outputs of the 1x1 projection conv "
                "whose z⁺ denominator is 0; z⁺ drops it, so Σ R exceeds the logit by 1.6-2.2 %",
    "linen_cnn": "BatchNorm after avg_pool stays an affine layer (pass-through); the next conv's z⁺ gives "
                 "relevance to its shift at the 194 of 576 pool outputs that are 0, where the pool's z-rule "
                 "has a zero denominator: 47-49 % of the logit is lost",
}

CONSERVATIVE = ["dtd", "zplus"]  # z^B (w² for tabular inputs) on the first layer, z⁺ after it
RTOL_OUTPUT, ATOL_OUTPUT = 1e-4, 1e-5
RTOL_CONSERVATION = 1e-4
TOL_DTYPE = 1e-4  # of max |R|


def _params(known: dict[str, str] | None = None, error: type[Exception] = AssertionError):
    """The models as test parameters (PENDING ones only when `known` is PENDING); the models in `known`
    are strict xfails that must fail with `error`."""
    names = NAMES if known is PENDING else [name for name in NAMES if name not in PENDING]
    known = known or {}
    return [pytest.param(name, marks=pytest.mark.xfail(raises=error, strict=True, reason=known[name]))
            if name in known else name for name in names]


@functools.lru_cache(maxsize=None)
def data(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(MODELS_DIR / f"{name}.npz") as z:
        return z["x"], z["y"]


def path(name: str) -> str:
    return str(MODELS_DIR / f"{name}.onnx")


@functools.lru_cache(maxsize=None)
def model(name: str) -> onnxdtd.LayerList:
    """The parsed model; an UnsupportedOperatorError also lists every other unsupported node."""
    strict = name not in LENIENT
    try:
        return onnxdtd.load(path(name), strict=strict)
    except onnxdtd.UnsupportedOperatorError as exc:
        every = [str(e) for e in onnxdtd.find_unsupported(path(name), strict=strict)]
        if hasattr(exc, "add_note"):
            exc.add_note(f"every unsupported node of {name}:\n  " + "\n  ".join(every))
        raise


def preset(name: str, rules: str) -> str:
    """`dtd` means z^B on bounded inputs (images); tabular z-scores are unbounded and get `dtd-w2`."""
    return "dtd-w2" if rules == "dtd" and data(name)[0].ndim == 2 else rules


@functools.lru_cache(maxsize=None)
def explain(name: str, rules: str, dtype: type = np.float32, keep: bool = False) -> onnxdtd.Explanation:
    x, _ = data(name)
    with pytest.warns(onnxdtd.LenientWarning) if name in LENIENT else contextlib.nullcontext():
        ex = onnxdtd.Explainer(model(name), rules=preset(name, rules), low=float(x.min()), high=float(x.max()),
                               dtype=dtype)
    return ex.explain(x, keep=keep)


def table(name: str) -> str:
    return f"\nlayer table of {name}:\n{model(name)}"


def test_every_listed_model_is_committed():
    assert len(NAMES) >= 8, f"models missing from {MODELS_DIR}"
    for listing in (PENDING, LENIENT, STALE_SHAPES, NOT_CONSERVED):
        assert set(listing) <= set(NAMES), set(listing) - set(NAMES)
    assert [name for name in NAMES if not (MODELS_DIR / f"{name}.npz").is_file()] == []


@pytest.mark.parametrize("name", _params(PENDING, onnxdtd.UnsupportedOperatorError))
def test_load(name):
    m = model(name)
    assert len(m) > 0, table(name)
    passed_through = {layer.op_type for layer in m.lenient}
    assert passed_through == ({LENIENT[name]} if name in LENIENT else set()), table(name)


@pytest.mark.parametrize("name", sorted(LENIENT))
def test_strict_load_names_the_op_without_rule(name):
    with pytest.raises(onnxdtd.UnsupportedOperatorError, match=LENIENT[name]):
        onnxdtd.load(path(name))


@pytest.mark.parametrize("name", _params())
def test_output_is_jax_output(name):
    x, y = data(name)
    res = explain(name, "zplus")
    np.testing.assert_allclose(res.output, y.reshape(len(x), -1), rtol=RTOL_OUTPUT, atol=ATOL_OUTPUT,
                               err_msg=table(name))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("rules", CONSERVATIVE)
@pytest.mark.parametrize("name", _params(NOT_CONSERVED))
def test_dtd_conserves_the_logit(name, rules, dtype):
    x, _ = data(name)
    res = explain(name, rules, dtype)
    assert res.relevance.shape == x.shape, table(name)
    assert res.relevance.dtype == dtype, table(name)
    assert np.all(np.isfinite(res.relevance)), table(name)
    logit = res.output[np.arange(len(x)), res.target].astype(np.float64)
    total = res.relevance.reshape(len(x), -1).sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(total, logit, rtol=RTOL_CONSERVATION, atol=0,
                               err_msg=f"Σ R != logit under {preset(name, rules)}{table(name)}")


@pytest.mark.parametrize("rules", CONSERVATIVE)
@pytest.mark.parametrize("name", _params())
def test_float32_matches_float64(name, rules):
    r32 = explain(name, rules, np.float32).relevance.astype(np.float64)
    r64 = explain(name, rules, np.float64).relevance
    scale = np.abs(r64).max()
    assert scale > 0, f"all relevance is zero{table(name)}"
    assert np.abs(r32 - r64).max() <= TOL_DTYPE * scale, table(name)


@pytest.mark.parametrize("name", _params(STALE_SHAPES))
def test_layer_table_shapes_are_runtime_shapes(name):
    """The static shapes in the layer table (from the file's value_info and shape inference) are the
    shapes onnxruntime computes; symbolic dimensions such as the batch "B" are skipped."""
    res = explain(name, "zplus", keep=True)
    wrong = []
    for layer in model(name):
        for tensor, static in zip(layer.outputs, layer.output_shapes):
            if tensor in res.intermediate and static is not None:
                actual = res.intermediate[tensor].shape
                if len(static) != len(actual) or any(isinstance(s, int) and s > 0 and s != a
                                                     for s, a in zip(static, actual)):
                    wrong.append(f"{layer.index}:{layer.name} {tensor}: table {static}, run time {actual}")
    assert not wrong, "\n".join(wrong) + table(name)
