"""The engine's gradient mode: the exact gradient of the explained output on every backend, against
torch autograd of the same networks, and gradient × input = LRP-0 on a bias-free ReLU network."""
import io
import warnings

import numpy as np
import onnx
import pytest

import onnxdtd
from onnxdtd.backends import get_backend
from onnxdtd.backends.ort import session
from onnxdtd.engine import Walk, backward, reads
from onnxdtd.export import build
from onnxdtd.forward import Forward
from onnxdtd.rules import gradient

torch = pytest.importorskip("torch")
nn = torch.nn

BACKENDS = onnxdtd.available_backends()
SHAPES = {"mlp": (3, 12), "cnn": (3, 3, 16, 16), "residual": (3, 3, 8, 8), "relu6": (3, 1, 8, 8)}


class Residual(nn.Module):
    """Input scaling, conv-BN-ReLU-conv-BN plus a one-channel skip broadcast over the channels, a
    spatial mean added back (broadcast over space), ReduceSum and a dense head."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.skip = nn.Conv2d(3, 1, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = x * 2.0 - 0.5
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        r = torch.relu(y + self.skip(x))
        r = torch.relu(r + r.mean(dim=(2, 3), keepdim=True))
        return self.head(r.sum(dim=(2, 3)))


class Relu6(nn.Module):
    """A one-channel input scaled into three channels (a broadcasting affine layer), a conv with large
    weights into ReLU6 (many units saturated), Max/Min with constants, a dense head."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]).reshape(1, 3, 1, 1), requires_grad=False)
        self.conv = nn.Conv2d(3, 6, 3)
        self.head = nn.Linear(6 * 6 * 6, 5)

    def forward(self, x):
        h = nn.functional.relu6(self.conv(x * self.scale + 0.25) * 10.0)
        h = torch.minimum(torch.maximum(h, torch.tensor(0.5)), torch.tensor(5.0))
        return self.head(h.flatten(1))


def _models():
    """Name -> the torch network (float32, eval mode, seeded random weights and BN statistics)."""
    torch.manual_seed(0)
    return {
        "mlp": nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.LeakyReLU(0.1), nn.Linear(16, 5)),
        "cnn": nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.PReLU(8),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True),
            nn.Conv2d(8, 8, 1), nn.ReLU(),
            nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=True),  # 8 -> 5, overhanging
            nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)),
        "residual": Residual(),
        "relu6": Relu6(),
    }


def _randomized(model):
    """Random BN statistics and affine parameters (the default ones fold into identities), eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
                m.weight.copy_(0.5 + torch.rand_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
    return model.eval()


def _export(net, sample) -> onnx.ModelProto:
    """The TorchScript export of `net` with a dynamic batch axis, BatchNormalization nodes left for
    onnxdtd to fold."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated (still works in torch 2.14)
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (sample,), buffer, dynamo=False, do_constant_folding=False, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    return onnx.load_from_string(buffer.getvalue())


@pytest.fixture(scope="module")
def networks():
    """Name -> (torch network, its ONNX export)."""
    return {name: (net, _export(_randomized(net), torch.rand(*SHAPES[name]))) for name, net in _models().items()}


def _autograd(net, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """d output[n, target[n]] / d x[n] for every sample, by torch autograd in float64."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = net.double()(xt)
    out[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
    net.float()
    return xt.grad.numpy()


def _start(n: int, k: int, target: np.ndarray) -> np.ndarray:
    """1 at each sample's target output, 0 elsewhere."""
    start = np.zeros((n, k))
    start[np.arange(n), target] = 1.0
    return start


def walk_gradient(proto: onnx.ModelProto, x: np.ndarray, target: np.ndarray, backend: str,
                  dtype: type) -> np.ndarray:
    """The gradient-mode walk on `backend`, layer by layer, on the forward pass's activations; the walk
    must leave no activation behind. Its maxpool mode is "proportional": gradient mode routes to winners."""
    model = onnxdtd.load(proto)
    rules = gradient.assign(model)
    read = reads(model, rules, mode="gradient")
    every = {name for layer in model for name in layer.outputs}
    acts = Forward(model.proto, model.inputs, sorted(every | set(read)), derived=model.derived).run({"input": x})
    impl = get_backend(backend)
    output = acts[model.output_name]
    walk = Walk(model, rules, impl, {name: impl.asarray(acts[name], dtype) for name in read}, "proportional", {},
                {name: value.shape for name, value in acts.items()}, mode="gradient")
    found, _ = backward(walk, impl.asarray(_start(len(x), output.shape[1], target), dtype))
    assert walk.acts == {}
    return impl.to_numpy(found["input"])


def graph_gradient(proto: onnx.ModelProto, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The gradient-mode walk on symbols: the whole explanation graph (the `ort` backend's form)."""
    model = onnxdtd.load(proto)
    graph = build(model, gradient.assign(model), 0.0, 1.0, "proportional", "input", "one", np.float32,
                  mode="gradient")
    return session(graph).run(["relevance"], {"input": x, "target": target.astype(np.int64)})[0]


def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
    shape = SHAPES[name]
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    return x, np.arange(shape[0]) % 5


def _close(got: np.ndarray, expected: np.ndarray) -> None:
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", SHAPES)
def test_gradient_equals_autograd(networks, backend, name):
    net, proto = networks[name]
    x, target = _data(name)
    dtype = np.float64 if get_backend(backend).float64 else np.float32
    got = walk_gradient(proto, x, target, backend, dtype)
    assert got.dtype == dtype
    _close(got, _autograd(net, x, target))


@pytest.mark.parametrize("name", SHAPES)
def test_exported_gradient_graph_equals_autograd(networks, name):
    net, proto = networks[name]
    x, target = _data(name)
    _close(graph_gradient(proto, x, target), _autograd(net, x, target))


def test_models_exercise_every_gradient_handler(networks):
    layers = [layer for _, proto in networks.values() for layer in onnxdtd.load(proto)]
    kinds = {layer.kind for layer in layers}
    assert {"dense", "conv", "convtranspose", "maxpool", "avgpool", "reduce", "add", "elementwise", "affine"} <= kinds
    functions = {layer.attrs.get("function") for layer in layers}
    assert {"Relu", "LeakyRelu", "PRelu", "Clip", "Max", "Min"} <= functions
    assert any(layer.kind == "add" and layer.input_shapes[0] != layer.input_shapes[1] for layer in layers)
    assert any(layer.kind == "affine" and layer.input_shapes[0] != layer.output_shapes[0] for layer in layers)
    pools = {layer.attrs["count_include_pad"] for layer in layers if layer.kind == "avgpool"}
    assert pools == {0, 1}


def test_relu6_units_saturate(networks):
    net, _ = networks["relu6"]
    x, _ = _data("relu6")
    with torch.no_grad():
        pre = net.conv(torch.tensor(x) * net.scale + 0.25) * 10.0
    assert (pre > 6).float().mean() > 0.1 and (pre < 0).float().mean() > 0.1


def bias_free_relu_network() -> onnx.ModelProto:
    """A ReLU network without biases in float64 (so that LRP-0's forward z are exact: onnxruntime has
    float64 Gemm, no float64 Conv)."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(10, 16, bias=False), nn.ReLU(), nn.Linear(16, 16, bias=False), nn.ReLU(),
                        nn.Linear(16, 3, bias=False)).double().eval()
    return _export(net, torch.rand(1, 10, dtype=torch.float64))


@pytest.mark.parametrize("backend", [name for name in BACKENDS if get_backend(name).float64])
def test_gradient_times_input_is_lrp0_on_a_bias_free_relu_network(backend):
    proto = bias_free_relu_network()
    x = 1e3 * np.random.default_rng(4).random((4, 10))  # large z: LRP-0's 1e-6 stabilizer negligible
    target = np.array([0, 2, 1, 0])
    lrp = onnxdtd.Explainer(proto, rules="lrp0", backend=backend, dtype=np.float64).explain(x, target)
    _close(walk_gradient(proto, x, target, backend, np.float64) * x, lrp.relevance)


def test_unknown_mode_is_a_config_error():
    model = onnxdtd.load(bias_free_relu_network())
    with pytest.raises(onnxdtd.ConfigError, match="mode must be one of"):
        reads(model, gradient.assign(model), mode="saliency")


def test_gradient_mode_reads_activation_inputs_and_no_sum_inputs(networks):
    model = onnxdtd.load(networks["residual"][1])
    rules = gradient.assign(model)
    read = set(reads(model, rules, mode="gradient"))
    assert {layer.inputs[0] for layer in model if layer.kind == "elementwise"} <= read
    first_sum = next(layer for layer in model if layer.kind == "add")  # of two conv outputs
    assert not set(first_sum.inputs) & read
    assert set(first_sum.inputs) <= set(reads(model, rules))
