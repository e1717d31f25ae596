"""What a training run tells the person watching it: a progress bar, metrics.jsonl, PNG plots at the end,
and Weights & Biases / TensorBoard when installed and asked for. Only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


class Telemetry:
    def __init__(self, run: Path, cfg: Any, main: bool, total_steps: int, start_step: int, device: torch.device):
        self.run, self.main, self.device = run, main, device
        self.peak: float | None = None
        self.bar = self.wandb = self.tb = None
        if not main:
            return
        self.metrics = open(run / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        if cfg.wandb_project:
            try:
                import wandb

                self.wandb = wandb.init(project=cfg.wandb_project, dir=str(run), config=vars(cfg))
            except ImportError:
                print("nanoseek: wandb is not installed; logging to metrics.jsonl only")
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run / "tensorboard"))
            except ImportError:
                print("nanoseek: tensorboard is not installed; logging to metrics.jsonl only")

    def mfu(self, tokens_per_s_per_device: float, flops_per_token: int) -> float | None:
        """Model FLOPs utilisation against the device's peak (GPU table, or a cached CPU matmul probe)."""
        if self.peak is None:
            try:
                from nanoseek.eval.cost import device_peak_flops

                self.peak = device_peak_flops(self.device, "bf16" if self.device.type == "cuda" else "fp32")
            except (ImportError, ValueError):
                self.peak = float("nan")  # an unknown GPU: no MFU rather than a wrong one
        mfu = tokens_per_s_per_device * flops_per_token / self.peak
        if mfu > 1 and self.device.type == "cpu":  # the cached probe ran on a busy machine: measure again
            from nanoseek.eval.cost import cpu_peak_flops

            self.peak = cpu_peak_flops("fp32", refresh=True)
            mfu = tokens_per_s_per_device * flops_per_token / self.peak
        return None if mfu != mfu else round(mfu, 4)

    def log(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        record = dict(record, device=str(self.device))
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.bar is not None:
            post = {"loss": f"{record['main_loss']:.3f}", "tok/s": f"{record['tokens_per_s']:.0f}"}
            if record.get("mfu") is not None:
                post["mfu"] = f"{100 * record['mfu']:.1f}%"
            if "val_loss" in record:
                post["val"] = f"{record['val_loss']:.3f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
        scalars = {k: v for k, v in record.items() if isinstance(v, int | float) and k != "step"}
        if self.wandb is not None:
            self.wandb.log(scalars, step=record["step"])
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if not self.main:
            return
        if self.bar is not None:
            self.bar.close()
        self.metrics.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()
        plot_run(self.run)


def plot_run(run: Path) -> list[Path]:
    """loss.png (train / val / MTP) and expert_load.png (MaxVio per MoE layer) from metrics.jsonl."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        return []
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["main_loss"] for r in rows], label="train (main)")
    if any(r.get("mtp_loss") for r in rows):
        ax.plot(steps, [r["mtp_loss"] for r in rows], label="MTP (weighted)")
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set(xlabel="step", ylabel="loss", title=f"{run.name}: loss")
    ax.legend()
    fig.tight_layout()
    out = [run / "loss.png"]
    fig.savefig(out[0], dpi=110)
    plt.close(fig)
    if rows[0].get("max_vio"):
        fig, ax = plt.subplots(figsize=(7, 4))
        for layer in range(len(rows[0]["max_vio"])):
            ax.plot(steps, [r["max_vio"][layer] for r in rows], label=f"MoE layer {layer}")
        for k in range(len(rows[0].get("max_vio_mtp") or [])):
            ax.plot(steps, [r["max_vio_mtp"][k] for r in rows], "--", label=f"MTP module {k + 1}")
        ax.set(xlabel="step", ylabel="MaxVio (max load / mean - 1)", title=f"{run.name}: expert load balance")
        ax.legend()
        fig.tight_layout()
        out.append(run / "expert_load.png")
        fig.savefig(out[1], dpi=110)
        plt.close(fig)
    return out
