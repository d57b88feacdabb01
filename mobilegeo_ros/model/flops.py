"""FLOPs, parameter counts and batch-1 speed of the embedding networks, for the benchmark tables.

FLOPs count multiply-adds of convolutions and matrix products as 2 operations, as ``torch.utils.flop_counter``
does (element-wise ops, pooling and normalisation are not counted by either). :func:`onnx_flops` applies the same rule
to an ONNX graph, for models that exist only as ONNX (the teacher baseline); a test checks both agree on the student.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def torch_flops(module, input_px: int, batch: int = 1) -> int:
    """FLOPs of one forward pass of ``module`` on a ``batch``×3×S×S float32 input (``torch.utils.flop_counter``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    p = next(module.parameters())
    x = torch.zeros(batch, 3, input_px, input_px, dtype=p.dtype, device=p.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return int(counter.get_total_flops())


def torch_images_per_s(module, input_px: int, n: int = 10, warmup: int = 2) -> float:
    """Batch-1 forward passes per second of ``module`` (as it is: put it in eval mode first) on a 1×3×S×S random
    input on its parameters' device, timed over ``n`` passes after ``warmup`` untimed ones."""
    import time

    import torch

    p = next(module.parameters())
    x = torch.randn(1, 3, input_px, input_px, device=p.device)
    with torch.inference_mode():
        for _ in range(warmup):
            module(x)
        t = time.perf_counter()
        for _ in range(n):
            module(x)
    return n / (time.perf_counter() - t)


def torch_params(module) -> int:
    """Number of parameters (learnable and buffer-free) of a torch module."""
    return int(sum(p.numel() for p in module.parameters()))


def onnx_params(onnx_path: Path) -> int:
    """Elements of all initializers of an ONNX graph (its weights)."""
    import onnx

    model = onnx.load(str(onnx_path))
    return int(sum(int(np.prod(i.dims)) for i in model.graph.initializer))


def onnx_flops(onnx_path: Path, input_shape: tuple[int, ...]) -> int:
    """FLOPs (2 × multiply-adds) of Conv, Gemm and MatMul nodes of an ONNX graph with one input of ``input_shape``.

    Tensor shapes are measured, not inferred: the operands are made graph outputs and the graph is run once on
    zeros with onnxruntime (ONNX shape inference gives up on graphs with data-dependent Pad/Reshape, like the teacher).
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in inits)
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    wanted = sorted({t for n in nodes for t in (n.input[0], n.input[1], n.output[0]) if t not in inits})
    existing = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor as written
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    values = sess.run(wanted, {graph_input.name: np.zeros(input_shape, np.float32)})
    shapes = {**inits, **{name: v.shape for name, v in zip(wanted, values)}}
    total = 0
    for node in nodes:
        if node.op_type == "Conv":
            w, y = shapes[node.input[1]], shapes[node.output[0]]
            # y: N×Cout×H×W, w: Cout×(Cin/group)×kh×kw: every output element costs Cin/group·kh·kw multiply-adds
            total += 2 * int(np.prod(y)) * int(np.prod(w[1:]))
        else:
            a, y = shapes[node.input[0]], shapes[node.output[0]]
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            total += 2 * int(np.prod(y)) * int(a[-2] if trans_a else a[-1])
    return int(total)


__all__ = ["onnx_flops", "onnx_params", "torch_flops", "torch_images_per_s", "torch_params"]
