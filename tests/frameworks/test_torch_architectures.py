"""Architecture coverage: small PyTorch architectures (torch_zoo.py) through both torch exporters.

Every architecture is exported by the dynamo exporter (its default opset 20, and opsets 18 and 24)
and by the TorchScript exporter (opsets 13, 17 and 20, the newest it supports; and 13 without constant folding,
which keeps BatchNormalization nodes and the shape arithmetic), always with a dynamic batch axis, and
explained on a batch of another size than the one it was exported with. Checks per architecture,
exporter and preset:

- the output onnxdtd reports is onnxruntime's on the original file (the final Sigmoid of a multi-label head
  applied) and torch's logits;
- parity with zennit on the same torch model (float64, the composites of parity._zoo):
  max|R - R_zennit| <= 1e-4 max|R_zennit| per sample, for `dtd`, `zplus` and `epsilon-gamma-box`.
  onnxdtd's activations come from onnxruntime in float32, so on a sample where float32 rounding moves
  zennit's own relevance by more than 1e-5 (near-zero z+ denominators on outputs that are not ReLU-gated,
  residual sums that nearly cancel) the bound is 10x that change;
- float32 within 1e-4 of max|R| of float64 for `dtd` and `zplus`.

Every architecture has a zennit equivalent, so conservation (the fallback check where there is none) is
not asserted: on these random networks it does not hold exactly, in zennit neither, because relevance is
lost where a z+ denominator is zero (e.g. an output channel of a 1x1 conv with no positive weight that
still receives relevance through its bias or through a residual sum).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("zennit")
pytest.importorskip("onnxscript")  # the dynamo exporter needs it

import onnxruntime as ort  # noqa: E402

import onnxdtd  # noqa: E402  (the package under test: never skipped)

import torch_zoo  # noqa: E402
from torch_zoo import ARCHS  # noqa: E402

# id -> (parity._zoo exporter, opset; None: the exporter's default, opset 20 for dynamo in torch 2.14)
EXPORTERS = {
    "dynamo": ("dynamo", None),
    "dynamo-18": ("dynamo", 18),
    "dynamo-24": ("dynamo", 24),         # the newest opset the dynamo exporter and onnxruntime both take
    "ts-13": ("torchscript", 13),
    "ts-17": ("torchscript", 17),
    "ts-20": ("torchscript", 20),        # the newest opset of the TorchScript exporter
    "ts-nofold-13": ("torchscript-nofold", 13),
}
PARITY_PRESETS = ("dtd", "zplus", "epsilon-gamma-box")
FLOAT32_PRESETS = ("dtd", "zplus")
BATCH = 3  # exported with batch 2: the batch axis must be dynamic
TOL = 1e-4
# A sample whose relevance float32 rounding moves by more than TOL/NOISE_FACTOR (zennit float32 vs float64) is
# ill-conditioned: a residual sum that nearly cancels next to the 1e-6 stabilizer, a z+ denominator near zero
# on an output that is not ReLU-gated. torch's and onnxruntime's float32 kernels round differently, and their
# results at such points differ by up to ~5x what zennit's float32 run shows; there the bound is 10x that.
NOISE_FACTOR = 10


@dataclass(frozen=True)
class Case:
    """What one explanation is of: an architecture, the output explained (None: the only one), the shape of
    one sample of each input (None: the export shapes)."""

    arch: str
    output: str | None = None
    sizes: tuple | None = None

    def __str__(self) -> str:
        out = f":{self.output}" if self.output is not None else ""
        size = "@" + "x".join(map(str, self.sizes[0][1:])) if self.sizes is not None else ""
        return self.arch + out + size

    @property
    def spec(self) -> torch_zoo.Arch:
        return ARCHS[self.arch]

    @property
    def output_index(self) -> int:
        return 0 if self.output is None else self.spec.outputs.index(self.output)

    @property
    def shapes(self) -> dict:
        return dict(zip(self.spec.inputs, self.sizes)) if self.sizes is not None else dict(self.spec.inputs)


def _cases():
    for name, arch in ARCHS.items():
        outputs = arch.outputs if len(arch.outputs) > 1 else (None,)
        for output in outputs:
            yield Case(name, output)
            for size in arch.sizes:
                yield Case(name, output, (size,))


CASES = list(_cases())


def inputs(case: Case) -> dict[str, np.ndarray]:
    """A batch of BATCH samples per input, uniform in the architecture's [low, high], float32."""
    rng = np.random.default_rng(zlib.crc32(case.arch.encode()))
    spec = case.spec
    return {name: (spec.low + (spec.high - spec.low) * rng.random((BATCH, *shape))).astype(np.float32)
            for name, shape in case.shapes.items()}


def targets(k: int) -> np.ndarray:
    return np.array([0, k - 1, k // 2])


def relative_error(rel: dict, ref: dict) -> np.ndarray:
    """Per sample: max |rel - ref| over all inputs, relative to the sample's max |ref| over all inputs (to
    the batch's for a sample whose reference relevance is all zero: all of it lost at zero denominators)."""
    flat = {n: np.asarray(ref[n], np.float64).reshape(BATCH, -1) for n in ref}
    scale = np.max([np.abs(r).max(axis=1) for r in flat.values()], axis=0)
    assert scale.max() > 0
    scale = np.where(scale > 0, scale, scale.max())
    diff = np.max([np.abs(np.asarray(rel[n], np.float64).reshape(BATCH, -1) - flat[n]).max(axis=1) for n in ref],
                  axis=0)
    return diff / scale


def per_input(relevance, names) -> dict[str, np.ndarray]:
    """res.relevance as {input name: array}: an array for a one-input model, a dict for several."""
    if len(names) == 1 and not isinstance(relevance, dict):
        return {names[0]: relevance}
    assert isinstance(relevance, dict) and sorted(relevance) == sorted(names), type(relevance)
    return relevance


# ---------------------------------------------------------------- module-scoped caches


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """zennit on these tiny models: torch's thread pool only costs time (10x and more on a loaded machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Builds each torch model, ONNX file, zennit reference and onnxdtd explanation once."""
    return Cache(tmp_path_factory.mktemp("torch_architectures"))


class Cache:
    def __init__(self, root):
        self.root, self.store = root, {}

    def _get(self, key, make):
        if key not in self.store:
            self.store[key] = make()
        return self.store[key]

    def model(self, arch: str):
        return self._get(("model", arch), lambda: torch_zoo.build(arch))

    def onnx(self, arch: str, exporter: str) -> str:
        kind, opset = EXPORTERS[exporter]
        path = self.root / f"{arch}-{exporter}.onnx"
        return self._get(("onnx", arch, exporter),
                         lambda: str(torch_zoo.export(self.model(arch), arch, path, kind, opset)))

    def torch(self, case: Case):
        """(the torch model's own output, its logits), float32."""
        return self._get(("torch", case), lambda: torch_zoo.torch_outputs(
            self.model(case.arch), case.arch, list(inputs(case).values()), case.output_index))

    def target(self, case: Case) -> np.ndarray:
        return targets(self.torch(case)[1].shape[1])

    def zennit(self, case: Case, preset: str, dtype=np.float64):
        """(zennit's relevance per input name, zennit's logits), float64 unless `dtype` says otherwise."""
        def make():
            rel, logits = torch_zoo.zennit_explain(self.model(case.arch), case.arch, list(inputs(case).values()),
                                                   self.target(case), preset, case.output_index, dtype)
            return dict(zip(case.spec.inputs, rel)), logits
        return self._get(("zennit", case, preset, np.dtype(dtype).name), make)

    def explain(self, case: Case, exporter: str, preset: str, dtype=np.float64):
        def make():
            kwargs = {} if case.output is None else {"output": case.output}
            ex = onnxdtd.Explainer(self.onnx(case.arch, exporter), rules=preset, low=case.spec.low,
                                   high=case.spec.high, backend="numpy", dtype=dtype, **kwargs)
            x = inputs(case)
            return ex.explain(x if len(x) > 1 else next(iter(x.values())), target=self.target(case))
        return self._get(("explain", case, exporter, preset, np.dtype(dtype).name), make)


# ---------------------------------------------------------------- the checks

exporters = pytest.mark.parametrize("exporter", list(EXPORTERS))
cases = pytest.mark.parametrize("case", CASES, ids=str)


@exporters
@cases
def test_output(cache, case, exporter):
    """onnxdtd's output: onnxruntime's on the original file (final op applied) and torch's logits."""
    res = cache.explain(case, exporter, "dtd", np.float32)
    full, logits = cache.torch(case)
    x = inputs(case)
    session = ort.InferenceSession(cache.onnx(case.arch, exporter), providers=["CPUExecutionProvider"])
    ort_out = session.run(None, x)[case.output_index]
    np.testing.assert_allclose(ort_out, full, rtol=1e-4, atol=1e-5 * np.abs(full).max(),
                               err_msg="the exporter's file disagrees with torch")

    output = np.asarray(res.output)
    assert output.shape == logits.shape
    final = case.spec.final or (lambda z: z)
    np.testing.assert_allclose(final(output.astype(np.float64)), ort_out, rtol=1e-5, atol=1e-6 * np.abs(ort_out).max(),
                               err_msg="onnxdtd's output is not onnxruntime's on the original file")
    np.testing.assert_allclose(output, logits, rtol=1e-4, atol=1e-5 * np.abs(logits).max(),
                               err_msg="onnxdtd's output is not torch's logits")
    np.testing.assert_array_equal(res.target, cache.target(case))
    for name, rel in per_input(res.relevance, list(x)).items():
        assert rel.shape == x[name].shape and rel.dtype == np.float32
        assert np.isfinite(rel).all()


@pytest.mark.parametrize("preset", PARITY_PRESETS)
@exporters
@cases
def test_zennit_parity(cache, case, exporter, preset):
    """float64 onnxdtd on the ONNX file against zennit on the torch model, per sample: within 1e-4 of
    max|R_zennit|, or within NOISE_FACTOR x the change that float32 rounding makes to zennit's own relevance
    of that sample where that is larger (the activations onnxdtd explains are onnxruntime's, in float32)."""
    ref, logits = cache.zennit(case, preset)
    res = cache.explain(case, exporter, preset)
    np.testing.assert_allclose(res.output, logits, rtol=1e-4, atol=1e-5 * np.abs(logits).max())
    err = relative_error(per_input(res.relevance, list(ref)), ref)
    noise = relative_error(cache.zennit(case, preset, np.float32)[0], ref)
    bound = np.maximum(TOL, NOISE_FACTOR * noise)
    assert np.all(err <= bound), (f"{case}/{exporter}/{preset}: max|R - R_zennit| / max|R_zennit| per sample = "
                                  f"{np.array2string(err, precision=2)}; zennit float32 vs float64: "
                                  f"{np.array2string(noise, precision=2)}")


@pytest.mark.parametrize("preset", FLOAT32_PRESETS)
@exporters
@cases
def test_float32_matches_float64(cache, case, exporter, preset):
    """The float32 backward pass agrees with the float64 one within 1e-4 of max|R|; no NaN or Inf."""
    r32, r64 = (per_input(cache.explain(case, exporter, preset, dtype).relevance, list(case.shapes))
                for dtype in (np.float32, np.float64))
    for name in r32:
        assert r32[name].dtype == np.float32 and r64[name].dtype == np.float64
        assert np.isfinite(r32[name]).all() and np.isfinite(r64[name]).all()
    err = relative_error(r32, r64)
    assert np.all(err <= TOL), f"{case}/{exporter}/{preset}: float32 vs float64: {err} of max|R| per sample"


@exporters
def test_output_by_index_equals_by_name(cache, exporter):
    """`output=` takes the output's name or its index: the same explanation."""
    arch = "two_outputs"
    path, x = cache.onnx(arch, exporter), inputs(Case(arch, "logits"))["input"]
    for index, name in enumerate(ARCHS[arch].outputs):
        by_name = onnxdtd.Explainer(path, output=name).explain(x, target=1)
        by_index = onnxdtd.Explainer(path, output=index).explain(x, target=1)
        np.testing.assert_array_equal(by_name.output, by_index.output)
        np.testing.assert_array_equal(by_name.relevance, by_index.relevance)
