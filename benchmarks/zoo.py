"""The benchmark models: torchvision's VGG16, ResNet18 and ResNet50 with seeded random weights,
exported to ONNX once and cached (torch is needed only to build them and to time zennit)."""
from __future__ import annotations

import os
from pathlib import Path

CACHE = Path(os.environ.get("ONNXDTD_BENCH_MODELS", Path(__file__).resolve().parent / ".models"))
NAMES = ("vgg16", "resnet18", "resnet50")


def torch_model(name: str):
    """The torchvision model `name` in eval mode, weights drawn from seed 0 (same every call)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def onnx_path(name: str, size: int = 224) -> Path:
    """The ONNX export of torch_model(name) at size × size with a dynamic batch, built on first use."""
    path = CACHE / f"{name}_{size}.onnx"
    if not path.exists():
        import torch

        CACHE.mkdir(parents=True, exist_ok=True)
        x = torch.zeros(1, 3, size, size)
        tmp = path.with_suffix(".tmp")
        torch.onnx.export(torch_model(name), (x,), str(tmp), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        tmp.rename(path)
    return path
