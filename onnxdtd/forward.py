"""The forward pass: the original model in onnxruntime, with the tensors the backward walk needs as outputs."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .backends.ort import session
from .denominators import Denominators
from .errors import InputError, ModelLoadError
from .graph.layer import Derived


class Forward:
    """An onnxruntime session of the original model that also returns the named intermediate tensors,
    the tensors that canonicalization derived from them (see graph.layer.Derived), and with `extra`
    the rule denominators it computes (see onnxdtd.denominators); with `binding` (a backend's
    forward_binding) the outputs stay on the backend's device."""

    def __init__(self, proto: onnx.ModelProto, inputs: Iterable[str], tensors: Iterable[str],
                 providers: Sequence | None = None, derived: dict[str, Derived] | None = None,
                 extra: Denominators | None = None, binding: Binding | None = None):
        inputs = set(inputs)
        self.derived = dict(derived or {})
        sources = [name for d in self.derived.values() for name in (d.source, d.like) if name]
        tensors = [t for t in [*tensors, *sources] if t not in self.derived]
        self.names = list(dict.fromkeys(t for t in tensors if t not in inputs))
        try:
            # Every optimization: onnxruntime never fuses away a tensor that is a graph output, so the
            # exposed tensors stay the model's own. No spinning threads: the kernels run between calls.
            self.session = session(_with_outputs(proto, self.names, extra or Denominators()), providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"onnxruntime cannot run this model: {str(exc).strip().splitlines()[-1]}") from exc
        self.binding = _available(binding, self.session)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All exposed tensors for the model inputs `feeds`, the inputs themselves included."""
        try:
            values = self._outputs(feeds)
        except Exception as exc:  # e.g. a shape that the graph's own Reshape cannot take
            shapes = {name: x.shape for name, x in feeds.items()}
            raise InputError(f"onnxruntime rejected the input of shape(s) {shapes}: "
                             f"{str(exc).strip().splitlines()[-1]}") from exc
        acts = {**feeds, **dict(zip(self.names, values))}
        for name, d in self.derived.items():
            source = acts[d.source]
            acts[name] = (np.concatenate([-source, source], axis=-1) if d.kind == "negpair"
                          else source.reshape(acts[d.like].shape))
        return acts

    def _outputs(self, feeds: dict[str, np.ndarray]) -> list:
        """The exposed tensors: host arrays, or with a binding the backend's arrays made from the
        OrtValues that onnxruntime left on the binding's device."""
        if self.binding is None:
            return self.session.run(self.names, feeds)
        device, convert = self.binding
        bound = self.session.io_binding()
        for name, x in feeds.items():
            bound.bind_cpu_input(name, x)
        for name in self.names:
            bound.bind_output(name, device.type, device.id)
        self.session.run_with_iobinding(bound)
        bound.synchronize_outputs()  # the provider's stream has finished writing them
        return [convert(value) for value in bound.get_outputs()]


@dataclass(frozen=True)
class Device:
    """An onnxruntime device: its type ("cpu", "cuda") and index."""

    type: str
    id: int = 0


Binding = tuple[str, Callable[[Any], Any]]  # Backend.forward_binding: device type, OrtValue conversion
PROVIDERS = {"cuda": "CUDAExecutionProvider"}  # the execution provider that owns each device type


def _available(binding: Binding | None, session: ort.InferenceSession) -> tuple[Device, Callable] | None:
    """The binding's device where the session runs its provider (with the provider's device_id);
    else the host, from which the conversion moves the outputs."""
    if binding is None:
        return None
    device, convert = binding
    provider = PROVIDERS.get(device)
    if provider not in session.get_providers():
        return Device("cpu"), convert
    options = session.get_provider_options().get(provider, {})
    return Device(device, int(options.get("device_id", 0))), convert


def _with_outputs(proto: onnx.ModelProto, names: list[str], extra: Denominators) -> bytes:
    """The serialized model with the nodes and initializers of `extra` and with `names` added to its
    graph outputs. They are appended to `proto` for the serialization and removed again, not added to
    a copy: a copy of a large model (its weights) would be one more model's size of peak memory."""
    graph = proto.graph
    known = {vi.name: vi for vi in [*graph.value_info, *graph.input, *graph.output]}
    present = {o.name for o in graph.output}
    counts = len(graph.output), len(graph.node), len(graph.initializer)
    graph.node.extend(extra.nodes)
    graph.initializer.extend(extra.initializers)
    for name in names:
        if name not in present:
            graph.output.append(known.get(name) or onnx.ValueInfoProto(name=name))  # type left to onnxruntime
    try:
        return proto.SerializeToString()
    finally:
        del graph.output[counts[0]:]
        del graph.node[counts[1]:]
        del graph.initializer[counts[2]:]
