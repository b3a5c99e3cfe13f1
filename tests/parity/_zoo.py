"""Torch models, ONNX export and zennit composites for the zennit parity tests.

torch and zennit are test oracles only; this module is imported after ``pytest.importorskip``.
"""
import copy
import warnings

import numpy as np
import torch
from torch import nn
from zennit import canonizers, composites, layer, rules, types

# ---------------------------------------------------------------- models


class Add(nn.Module):
    """Residual sum. Exported as a plain ``a + b`` (ONNX Add); in zennit mode (``stacked = True``)
    computed as ``zennit.layer.Sum`` over a stacked last dim so that a rule (Norm) can be put on it."""

    def __init__(self):
        super().__init__()
        self.stacked = False
        self.sum = layer.Sum()

    def forward(self, a, b):
        return self.sum(torch.stack([a, b], dim=-1)) if self.stacked else a + b


class Block(nn.Module):
    """Basic block conv-bn-relu-conv-bn + skip (1x1 strided projection if the shape changes), ReLU after the sum.
    Children are registered in forward order: SequentialMergeBatchNorm pairs adjacent leaves."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride), nn.BatchNorm2d(cout))
        self.add = Add()
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.add(y, x if self.proj is None else self.proj(x)))


def lenet():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))


def vgg():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, 10))


def resnet():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        Block(8, 8, 1), Block(8, 16, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def convs():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),            # strided
        nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(),          # dilated
        nn.Conv2d(8, 8, 3, padding=1, groups=8),                       # depthwise 3x3 ...
        nn.Conv2d(8, 16, 1), nn.ReLU(),                                # ... then 1x1 pointwise
        nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.ReLU(),          # padded, groups=2
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def mlp():
    return nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10), nn.Softmax(dim=1))


# name -> (constructor, input shape)
MODELS = {
    "lenet": (lenet, (2, 1, 28, 28)),
    "vgg": (vgg, (2, 3, 16, 16)),
    "resnet": (resnet, (2, 3, 16, 16)),
    "convs": (convs, (2, 3, 16, 16)),
    "mlp": (mlp, (2, 20)),
}


def build(name, seed=0):
    """float32 eval-mode model with random weights and non-trivial BatchNorm statistics and affine params."""
    torch.manual_seed(seed)
    return randomize(MODELS[name][0]())


def randomize(model):
    """Random weights (He init, small biases) and non-trivial BatchNorm statistics and affine params, in place,
    drawn from torch's global generator (seed it first); returns the model in eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):  # He init keeps the logits O(1) through the depth
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn_like(m.bias))
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.2 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
                m.weight.copy_(0.5 + torch.rand_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
    return model.eval()


def zennit_model(model):
    """float64 copy for zennit: residual sums as zennit Sum, final Softmax stripped (onnxdtd explains the logit)."""
    model = copy.deepcopy(model).double().eval()
    for m in model.modules():
        if isinstance(m, Add):
            m.stacked = True
    if isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Softmax):
        model = model[:-1]
    return model


# ---------------------------------------------------------------- export

# TorchScript folds BatchNorm into Conv by constant folding; "torchscript-nofold" keeps the
# BatchNormalization (and Identity) nodes so that onnxdtd's own BN folding is exercised.
EXPORTERS = ("dynamo", "torchscript", "torchscript-nofold")


def export(model, shape, path, exporter, opset=None, dynamic_axes=None, input_names=("input",),
           output_names=("output",)):
    """Export ``model`` to ``path`` with ``exporter`` (one of EXPORTERS), traced on random inputs.

    ``shape``: the input's shape, or a list of shapes for a model with several inputs (named by ``input_names``).
    ``opset``: the opset to export to (None: the exporter's default). ``dynamic_axes``: {input or output name:
    {axis: dimension name}}, as torch.onnx.export takes it (both exporters; None: all shapes static)."""
    shapes = [shape] if isinstance(shape[0], int) else list(shape)
    args = tuple(torch.rand(*s) for s in shapes)
    kwargs = {"dynamo": True} if exporter == "dynamo" else {"dynamo": False}
    if exporter == "torchscript-nofold":
        kwargs["do_constant_folding"] = False
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamic_axes:
        kwargs["dynamic_axes"] = dynamic_axes
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated (still works in torch 2.14)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*dynamic_axes.*", category=UserWarning)  # dynamo: fine here
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*", category=UserWarning)
        torch.onnx.export(model, args, str(path), input_names=list(input_names), output_names=list(output_names),
                          **kwargs)
    return path


# ---------------------------------------------------------------- zennit composites

class MergeBatchNorm(canonizers.SequentialMergeBatchNorm):
    """zennit 0.5.1's SequentialMergeBatchNorm, with the merged BatchNorm an exact identity. 0.5.1 leaves
    ``eps`` in place, so its "identity" BN still computes x / sqrt(1 + eps) (x (1 - 5e-6) per BN: ~1e-4 on the
    ResNet logits, 2e-5 of max|R|). Upstream zennit sets eps = 0 (later var = eps = 0.5, zennit PR #240)."""

    def merge_batch_norm(self, modules, batch_norm):
        super().merge_batch_norm(modules, batch_norm)
        self.eps = batch_norm.eps
        batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 0.5)
        batch_norm.eps = 0.5

    def remove(self):
        super().remove()
        self.batch_norm.eps = self.eps


EPSILON = 1e-6      # onnxdtd's ε for the `epsilon` preset and the ε rule in the epsilon-* presets
NOBIAS = ["bias"]   # onnxdtd's z⁺ and w² exclude the bias by default (DESIGN.md); zennit's include it


def composite(preset, low, high, first_names=None):
    """The zennit composite equivalent to onnxdtd's preset ``preset``. ``low``/``high``: float or float64 tensor.

    ``first_names``: for the presets whose first-layer rule goes to the first linear layer (``dtd``, ``dtd-w2``),
    the names of the modules that get it instead of zennit's first linear module: onnxdtd gives it to the
    first linear layer on *every* model input, so a model with several inputs names one module per input."""
    base = composites.layer_map_base()   # Activation: Pass, Sum: Norm, AvgPool: Norm, BatchNorm: Pass
    canon = [MergeBatchNorm()]
    rest = {
        "dtd": rules.ZPlus(zero_params=NOBIAS),
        "dtd-w2": rules.ZPlus(zero_params=NOBIAS),
        "zplus": rules.ZPlus(zero_params=NOBIAS),
        "lrp0": rules.Epsilon(epsilon=1e-6),
        "epsilon": rules.Epsilon(epsilon=EPSILON),
    }
    first = {
        "dtd": rules.ZBox(low=low, high=high),
        "dtd-w2": rules.WSquare(zero_params=NOBIAS),
    }
    if preset in first and first_names:
        return composites.NameLayerMapComposite(
            name_map=[(tuple(first_names), first[preset])], layer_map=base + [(types.Linear, rest[preset])],
            canonizers=canon)
    if preset in first:
        return composites.SpecialFirstLayerMapComposite(
            layer_map=base + [(types.Linear, rest[preset])], first_map=[(types.Linear, first[preset])],
            canonizers=canon)
    if preset in rest:
        return composites.LayerMapComposite(layer_map=base + [(types.Linear, rest[preset])], canonizers=canon)
    # the zennit composites of the same names, exactly as zennit defines them
    if preset == "epsilon-plus":
        return composites.EpsilonPlus(epsilon=EPSILON, canonizers=canon)
    if preset == "epsilon-gamma-box":
        return composites.EpsilonGammaBox(low=low, high=high, epsilon=EPSILON, canonizers=canon)
    if preset == "epsilon-alpha2-beta1":
        return composites.EpsilonAlpha2Beta1(epsilon=EPSILON, canonizers=canon)
    if preset == "epsilon-plus-flat":
        return composites.EpsilonPlusFlat(epsilon=EPSILON, canonizers=canon)
    raise KeyError(preset)


def zennit_explain(model, x, target, preset, low=0.0, high=1.0):
    """Relevance (float64 numpy) and logits of ``model`` (a float32 torch model) under ``preset``,
    with initial relevance logit[target] at the target (onnxdtd's convention)."""
    from zennit.attribution import Gradient

    zm = zennit_model(model)
    xt = torch.from_numpy(np.asarray(x, dtype=np.float64))
    as_t = (lambda v: v if np.isscalar(v) else torch.from_numpy(np.asarray(v, dtype=np.float64)))
    with torch.no_grad():
        logits = zm(xt)
    one_hot = torch.zeros_like(logits)
    one_hot[torch.arange(len(target)), torch.as_tensor(target)] = 1.0
    with Gradient(model=zm, composite=composite(preset, as_t(low), as_t(high))) as attributor:
        _, rel = attributor(xt.clone(), lambda out: out.detach() * one_hot)
    return rel.detach().numpy(), logits.numpy()
