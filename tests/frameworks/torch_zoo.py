"""Small PyTorch architectures for the architecture-coverage tests (test_torch_architectures.py).

Every model is tiny (inputs of 3x16x16 or smaller), built with random weights and non-trivial BatchNorm
statistics (parity._zoo.randomize) and put in eval mode. Children are registered in forward order:
zennit's SequentialMergeBatchNorm merges a BatchNorm into the linear layer that is the *previous leaf*,
so a BatchNorm that reads anything but that layer's own output must not follow a linear leaf.

Conventions the tests rely on (see ``logits_view`` and ``zennit_explain``):
- ``final``: a module applied last (Sigmoid for multi-label heads); the logit before it is explained.
- ``normalize``: a ``Normalize`` module (or a BatchNorm) applied to the input inside forward(); zennit gets
  the normalized input instead.
- ``BNLinear``: a BatchNorm directly before a linear layer; zennit gets the folded layer where onnxdtd
  folds it.
- Models with several outputs return a tuple; models with several inputs take them positionally.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from parity import _zoo
from parity._zoo import Add

# ---------------------------------------------------------------- building blocks


class Cat(nn.Module):
    """torch.cat along channels, as a leaf module (keeps zennit from merging a following BatchNorm)."""

    def forward(self, *xs):
        return torch.cat(xs, dim=1)


class Normalize(nn.Module):
    """(x - mean) / std inside forward(), per channel."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def conv_bn(cin, cout, k, stride=1, groups=1, act=nn.ReLU):
    """conv (no bias) - BN - activation, as Inception's BasicConv2d and MobileNet's layers."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         act())


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 - 3x3 (strided) - 1x1 with BN, projection shortcut (1x1 strided conv + BN)."""

    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU()
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.add = Add()
        self.relu3 = nn.ReLU()

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(y)))))
        return self.relu3(self.add(y, self.proj(x)))


class PreActBlock(nn.Module):
    """Pre-activation ResNet block (BN -> ReLU -> conv), projection from the pre-activated input if needed."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.proj = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        self.add = Add()

    def forward(self, x):
        a = self.relu1(self.bn1(x))
        y = self.conv2(self.relu2(self.bn2(self.conv1(a))))
        return self.add(y, x if self.proj is None else self.proj(a))


class DenseLayer(nn.Module):
    """DenseNet layer: BN -> ReLU -> 3x3 conv (growth channels), concatenated to its input."""

    def __init__(self, cin, growth):
        super().__init__()
        self.bn, self.relu = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1)
        self.cat = Cat()

    def forward(self, x):
        return self.cat(x, self.conv(self.relu(self.bn(x))))


class InceptionBlock(nn.Module):
    """1x1, 1x1-3x3, 1x1-5x5 and maxpool-1x1 branches (conv-BN-ReLU each), concatenated."""

    def __init__(self, cin):
        super().__init__()
        self.b1 = conv_bn(cin, 4, 1)
        self.b3 = nn.Sequential(conv_bn(cin, 4, 1), conv_bn(4, 6, 3))
        self.b5 = nn.Sequential(conv_bn(cin, 2, 1), conv_bn(2, 4, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, 4, 1))
        self.cat = Cat()

    def forward(self, x):
        return self.cat(self.b1(x), self.b3(x), self.b5(x), self.bp(x))


class BNLinear(nn.Module):
    """A BatchNorm directly before a linear layer (no activation between). onnxdtd folds it into the
    layer where that is exact (a dense layer, or a conv without padding and groups); zennit cannot, so the
    zennit model gets the folded layer there (``folded``) and keeps the BatchNorm (zennit: Pass) elsewhere."""

    def __init__(self, bn, linear):
        super().__init__()
        self.bn, self.linear = bn, linear

    def forward(self, x):
        return self.linear(self.bn(x))

    @property
    def foldable(self) -> bool:
        lin = self.linear
        return isinstance(lin, nn.Linear) or (isinstance(lin, nn.modules.conv._ConvNd) and lin.groups == 1
                                              and not any(lin.padding) and not lin.transposed)

    def folded(self) -> nn.Module:
        """The linear layer with the BatchNorm folded into its input side: W' = W scale, b' = b + W shift."""
        bn, lin = self.bn, copy.deepcopy(self.linear)
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * scale
            spread = (1, -1) + (1,) * (lin.weight.ndim - 2)
            bias = (lin.weight * shift.reshape(spread)).flatten(1).sum(1)
            lin.weight.mul_(scale.reshape(spread))
            lin.bias.add_(bias)
        return lin


def fold_bn_linear(model: nn.Module) -> nn.Module:
    """Replace every foldable BNLinear of `model` (in place) by its folded linear layer."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BNLinear) and child.foldable:
                setattr(parent, name, child.folded())
    return model


def head(cin, k):
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, k)]


# ---------------------------------------------------------------- the architectures


def vgg():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))


def vgg_bn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))


def resnet_bottleneck():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        Bottleneck(8, 4, 16, 1), Bottleneck(16, 8, 24, 2), *head(24, 10))


def preact():
    # stem conv, then max pooling: the first block's BN reads the pooled tensor (it also feeds the skip)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2),
        PreActBlock(8, 8, 1), PreActBlock(8, 16, 2), nn.BatchNorm2d(16), nn.ReLU(), *head(16, 10))


def densenet():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        DenseLayer(8, 4), DenseLayer(12, 4), DenseLayer(16, 4),
        nn.BatchNorm2d(20), nn.ReLU(), nn.Conv2d(20, 12, 1), nn.AvgPool2d(2),   # transition
        DenseLayer(12, 4), DenseLayer(16, 4),
        nn.BatchNorm2d(20), nn.ReLU(), *head(20, 10))


def inception():
    return nn.Sequential(conv_bn(3, 8, 3), InceptionBlock(8), nn.MaxPool2d(2), InceptionBlock(18), *head(18, 10))


def mobilenet():
    return nn.Sequential(
        conv_bn(3, 8, 3, stride=2, act=nn.ReLU6),
        conv_bn(8, 8, 3, groups=8, act=nn.ReLU6), conv_bn(8, 16, 1, act=nn.ReLU6),                # depthwise, pointwise
        conv_bn(16, 16, 3, stride=2, groups=16, act=nn.ReLU6), conv_bn(16, 24, 1, act=nn.ReLU6),
        *head(24, 10))


def conv1d():
    return nn.Sequential(
        nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv1d(16, 16, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 4))


def mlp():
    return nn.Sequential(
        nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5))


def bn_dense():
    """Tabular: an input BatchNorm before the first dense layer, a BatchNorm after a ReLU before the next."""
    return nn.Sequential(BNLinear(nn.BatchNorm1d(12), nn.Linear(12, 32)), nn.ReLU(),
                         BNLinear(nn.BatchNorm1d(32), nn.Linear(32, 16)), nn.ReLU(), nn.Linear(16, 5))


class BNConv(nn.Module):
    """BatchNorm directly before convs: on the input before a padded conv (a data BN, not foldable: a
    per-channel affine layer through which the z^B bounds are mapped, as `normalize`), after a concatenation
    before an unpadded 1x1 conv and after a ReLU before an unpadded strided 3x3 conv (both foldable), and
    after a ReLU before a padded 3x3 conv (not foldable)."""

    def __init__(self):
        super().__init__()
        self.normalize = nn.BatchNorm2d(3)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.cat = Cat()
        self.body = nn.Sequential(
            BNLinear(nn.BatchNorm2d(16), nn.Conv2d(16, 16, 1)), nn.ReLU(),
            BNLinear(nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3, padding=1)), nn.ReLU(),
            BNLinear(nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3, stride=2)), nn.ReLU(), *head(16, 10))

    def forward(self, x):
        h = self.stem(self.normalize(x))
        return self.body(self.cat(h, self.branch(h)))


class Normalized(nn.Module):
    def __init__(self):
        super().__init__()
        self.normalize = Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                  *head(16, 10))

    def forward(self, x):
        return self.body(self.normalize(x))


def regression():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))


class MultiLabel(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), *head(16, 6))
        self.final = nn.Sigmoid()

    def forward(self, x):
        return self.final(self.body(x))


class TwoOutputs(nn.Module):
    """A shared trunk with a 10-class head and a 3-unit auxiliary head."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.logits = nn.Linear(16, 10)
        self.aux = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        h = self.trunk(x)
        return self.logits(h), self.aux(h)


class TwoInputs(nn.Module):
    """An image branch and a tabular branch, concatenated before the head. The image conv comes first (in
    registration and in forward order), so it is the `first` layer of both onnxdtd and zennit."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.tabular = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.cat = Cat()
        self.head = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, image, tabular):
        return self.head(self.cat(self.image(image), self.tabular(tabular)))


class Upsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.dec = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), *head(8, 10))

    def forward(self, x):
        return self.dec(F.interpolate(self.enc(x), scale_factor=2, mode="nearest"))


class Slicing(nn.Module):
    """Slice (channels; spatial with a step), Split, Gather with constant indices and index_select."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.ca, self.cb, self.cc = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(3, 4, 1), nn.Conv2d(5, 4, 1)
        self.cd, self.ce = nn.Conv2d(3, 4, 1), nn.Conv2d(2, 4, 1)
        self.register_buffer("index", torch.tensor([1, 6]))
        self.relu = nn.ReLU()
        self.cat = Cat()
        self.head = nn.Sequential(*head(20, 10))

    def forward(self, x):
        h = self.stem(x)
        a = h[:, :4]                                 # Slice
        b, c = torch.split(h, [3, 5], dim=1)         # Split
        d = h[:, [0, 2, 7]]                          # Gather, constant indices
        e = torch.index_select(h, 1, self.index)     # Gather
        y = self.cat(self.ca(a), self.cb(b), self.cc(c), self.cd(d), self.ce(e))
        return self.head(self.relu(y[:, :, 1:, ::2]))   # Slice with start and step on the spatial axes


class Decoder(nn.Module):
    """conv encoder -> ConvTranspose2d (k2 s2; k3 s2 p1 output_padding 1) -> conv -> pooled head."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(16, 8, 2, 2), nn.ReLU(),
                                nn.ConvTranspose2d(8, 8, 3, 2, 1, output_padding=1), nn.ReLU())
        self.out = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), *head(8, 10))

    def forward(self, x):
        return self.out(self.up(self.enc(x)))


def dynamic_hw():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), *head(16, 5))


# ---------------------------------------------------------------- the specifications


@dataclass(frozen=True)
class Arch:
    """One architecture: its constructor, its inputs and outputs, the box its inputs live in."""

    build: Callable[[], nn.Module]
    inputs: dict                              # input name -> shape of one sample (the export shape)
    outputs: tuple = ("output",)
    low: float = 0.0                          # the inputs are drawn from [low, high] (z^B bounds)
    high: float = 1.0
    final: Callable | None = None             # numpy version of the model's final op, stripped by onnxdtd
    spatial: bool = False                     # export with dynamic spatial axes (2, 3) besides the batch
    sizes: tuple = ()                         # further shapes of one sample to explain (dynamic spatial only)
    first: tuple = ()                         # zennit: the modules that get the first-layer rule, one per input


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


IMAGE = {"input": (3, 16, 16)}
ARCHS = {
    "vgg": Arch(vgg, IMAGE),
    "vgg_bn": Arch(vgg_bn, IMAGE),
    "resnet_basic": Arch(_zoo.resnet, IMAGE),
    "resnet_bottleneck": Arch(resnet_bottleneck, IMAGE),
    "preact_bn_relu_conv": Arch(preact, IMAGE),
    "densenet_concat": Arch(densenet, IMAGE),
    "bn_before_conv": Arch(BNConv, IMAGE),
    "bn_before_dense": Arch(bn_dense, {"input": (12,)}, low=-2.0, high=2.0),
    "inception": Arch(inception, IMAGE),
    "mobilenet_relu6": Arch(mobilenet, IMAGE),
    "conv1d": Arch(conv1d, {"input": (2, 32)}, low=-1.0, high=1.0),
    "tabular_mlp": Arch(mlp, {"input": (12,)}, low=-2.0, high=2.0),
    "input_normalization": Arch(Normalized, IMAGE),
    "regression": Arch(regression, IMAGE),
    "multilabel_sigmoid": Arch(MultiLabel, IMAGE, final=_sigmoid),
    "two_outputs": Arch(TwoOutputs, IMAGE, outputs=("logits", "aux")),
    "two_inputs": Arch(TwoInputs, {"image": (3, 16, 16), "tabular": (6,)}, first=("image.0", "tabular.0")),
    "upsample_nearest": Arch(Upsample, IMAGE),
    "slice_split_gather": Arch(Slicing, IMAGE),
    "conv_transpose": Arch(Decoder, IMAGE),
    "dynamic_hw": Arch(dynamic_hw, IMAGE, spatial=True, sizes=((3, 21, 26),)),
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _zoo.randomize(ARCHS[name].build())


def export(model: nn.Module, name: str, path, exporter: str, opset: int | None):
    """Export with a dynamic batch axis on every input and output (and dynamic H, W where the arch says)."""
    arch = ARCHS[name]
    axes = {i: {0: "N", **({2: "H", 3: "W"} if arch.spatial else {})} for i in arch.inputs}
    axes.update({o: {0: "N"} for o in arch.outputs})
    shapes = [(2, *s) for s in arch.inputs.values()]
    return _zoo.export(model, shapes if len(shapes) > 1 else shapes[0], path, exporter, opset=opset,
                       dynamic_axes=axes, input_names=tuple(arch.inputs), output_names=arch.outputs)


# ---------------------------------------------------------------- torch and zennit references


class Select(nn.Module):
    """One output of a multi-output model."""

    def __init__(self, model, index):
        super().__init__()
        self.model, self.index = model, index

    def forward(self, *xs):
        return self.model(*xs)[self.index]


def logits_view(model: nn.Module, name: str, output: int) -> nn.Module:
    """The explained function: output `output`, the final op (Sigmoid) stripped."""
    model = copy.deepcopy(model)
    if isinstance(getattr(model, "final", None), nn.Module):
        model.final = nn.Identity()
    return Select(model, output) if len(ARCHS[name].outputs) > 1 else model


def torch_outputs(model: nn.Module, name: str, xs: list[np.ndarray], output: int) -> tuple[np.ndarray, np.ndarray]:
    """(the model's own output `output`, its logits) in float32 torch."""
    xt = [torch.from_numpy(x) for x in xs]
    with torch.no_grad():
        full = model(*xt)
        logits = logits_view(model, name, output)(*xt)
    full = full[output] if isinstance(full, tuple) else full
    return full.numpy(), logits.numpy()


def zennit_explain(model: nn.Module, name: str, xs: list[np.ndarray], target: np.ndarray, preset: str,
                   output: int = 0, dtype=np.float64) -> tuple[list[np.ndarray], np.ndarray]:
    """zennit's relevance (one array per input) and logits for `preset`, with initial relevance logit[target]
    at the target (onnxdtd's convention); parity._zoo's composites and model conversion. float64 unless
    `dtype` says otherwise (float32 measures how sensitive the relevance is to float32 rounding).

    Input normalization inside forward() (``normalize``: Normalize or a BatchNorm) is taken out of the zennit
    model, which then gets the normalized input and bounds: zennit's ZBox sees the first conv's input box,
    and the relevance at the normalized input equals onnxdtd's at the pixels (an affine layer passes
    relevance unchanged). A BatchNorm directly before a dense layer or an unpadded conv is folded into that
    layer (``fold_bn_linear``), as onnxdtd does and zennit cannot."""
    arch = ARCHS[name]
    zm = fold_bn_linear(_zoo.zennit_model(logits_view(model, name, output)))   # float64
    zm = zm.to(torch.float64 if np.dtype(dtype) == np.float64 else torch.float32)
    wrapped = isinstance(zm, Select)
    inner = zm.model if wrapped else zm
    xs = [torch.from_numpy(np.asarray(x, dtype=dtype)) for x in xs]
    low, high = arch.low, arch.high
    norm = getattr(inner, "normalize", None)
    if isinstance(norm, nn.Module):
        inner.normalize = nn.Identity()
        with torch.no_grad():
            box = [norm(torch.full((1, xs[0].shape[1], 1, 1), b, dtype=xs[0].dtype)) for b in (low, high)]
            low, high = torch.minimum(*box), torch.maximum(*box)
            xs[0] = norm(xs[0])
    xs = [x.clone().requires_grad_(True) for x in xs]
    first = ["model." + n for n in arch.first] if wrapped else list(arch.first)
    with _zoo.composite(preset, low, high, first).context(zm) as modified:
        out = modified(*xs)
        init = torch.zeros_like(out)
        rows = torch.arange(len(target))
        init[rows, torch.as_tensor(target)] = out.detach()[rows, torch.as_tensor(target)]
        grads = torch.autograd.grad(out, xs, grad_outputs=init)
    return [g.detach().numpy() for g in grads], out.detach().numpy()
