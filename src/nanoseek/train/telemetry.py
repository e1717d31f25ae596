"""What a training run tells the person watching it: a progress bar, metrics.jsonl, PNG plots at the
end, and Weights & Biases / TensorBoard when installed and asked for. Only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


class Telemetry:
    def __init__(self, run: Path, cfg: Any, main: bool, total_steps: int, start_step: int,
                 device: torch.device, bar: dict[str, str] | None = None):
        """bar: what the progress bar shows, label -> record key (default: pretraining's losses,
        tokens/s and MFU)."""
        self.run, self.main, self.device = run, main, device
        self.bar_keys = bar
        self.peak: float | None = None
        self.reprobed = False
        self.bar = self.wandb = self.tb = None
        if not main:
            return
        self.metrics = open(run / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step",
                            dynamic_ncols=True)
        if cfg.wandb_project:
            try:
                import wandb

                self.wandb = wandb.init(project=cfg.wandb_project, dir=str(run),
                                        config=vars(cfg))
            except ImportError:
                print("nanoseek: wandb is not installed; logging to metrics.jsonl only")
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run / "tensorboard"))
            except ImportError:
                print("nanoseek: tensorboard is not installed; logging to metrics.jsonl only")

    def mfu(self, tokens_per_s_per_device: float, flops_per_token: int) -> float | None:
        """Model FLOPs utilisation against the device's peak (GPU table, or a cached CPU matmul
        probe)."""
        if self.peak is None:
            try:
                from nanoseek.hardware import device_peak_flops

                dtype = "bf16" if self.device.type == "cuda" else "fp32"
                self.peak = device_peak_flops(self.device, dtype)
            except (ImportError, ValueError):
                self.peak = float("nan")  # an unknown GPU: no MFU rather than a wrong one
        from nanoseek.hardware import cpu_peak_flops, mfu

        value = mfu(tokens_per_s_per_device, flops_per_token, self.peak)
        if value > 1 and self.device.type == "cpu" and not self.reprobed:
            # the cached probe ran on a busy machine: measure again, once a run (a second
            # probe would cost every logged step a second of matmuls)
            self.reprobed = True
            self.peak = cpu_peak_flops("fp32", refresh=True)
            value = mfu(tokens_per_s_per_device, flops_per_token, self.peak)
        return None if value != value else round(value, 4)

    def log(self, record: dict[str, Any], advance: bool = True) -> None:
        """Write a metrics record; advance: it ends a step (the bar moves)."""
        if not self.main:
            return
        record = dict(record, device=str(self.device))
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.bar is not None and advance:
            self.bar.set_postfix(self._postfix(record), refresh=False)
            self.bar.update(1)
        scalars = {k: v for k, v in record.items() if isinstance(v, int | float) and k != "step"}
        if self.wandb is not None:
            self.wandb.log(scalars, step=record["step"])
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, record["step"])

    def _postfix(self, record: dict[str, Any]) -> dict[str, str]:
        if self.bar_keys:
            return {label: f"{record[k]:.3g}" for label, k in self.bar_keys.items() if k in record}
        # pretraining: the step's next-token loss, named as in metrics.jsonl; its "loss" is the
        # objective (MTP and balance terms added), which the bar does not show
        post = {"main_loss": f"{record['main_loss']:.3f}", "tok/s": f"{record['tokens_per_s']:.0f}"}
        if record.get("mfu") is not None:
            post["mfu"] = f"{100 * record['mfu']:.1f}%"
        if "val_loss" in record:
            post["val_loss"] = f"{record['val_loss']:.3f}"
        return post

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
    """From metrics.jsonl: loss.png (train / val / MTP) and expert_load.png (MaxVio per MoE layer)
    of a training run; rewards.png and response_length.png of a GRPO run (the two curves R1-Zero is
    known by)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if line.strip()]

    def figure(name: str, title: str, ylabel: str,
               lines: list[tuple[list, list, str, str]]) -> Path:
        """One PNG of (x, y, label, matplotlib format) lines; empty lines are left out."""
        fig, ax = plt.subplots(figsize=(7, 4))
        for x, y, label, fmt in lines:
            if y:
                ax.plot(x, y, fmt, label=label)
        ax.set(xlabel="step", ylabel=ylabel, title=f"{run.name}: {title}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run / name, dpi=110)
        plt.close(fig)
        return run / name

    def series(key: str, where: list[dict[str, Any]] = rows) -> tuple[list, list]:
        have = [r for r in where if key in r]
        return [r["step"] for r in have], [r[key] for r in have]

    if any("reward" in r for r in rows):
        steps = [r for r in rows if "reward" in r]
        return [figure("rewards.png", "rewards", "reward / accuracy",
                       [(*series("reward"), "reward (total)", "-"),
                        (*series("accuracy"), "accuracy (rollouts)", "-"),
                        (*series("eval_accuracy"), "accuracy (held out, greedy)", "o-")]),
                figure("response_length.png", "response length", "tokens per completion",
                       [(*series("response_len", steps), "mean", "-"),
                        (*series("response_len_max", steps), "max", ":")])]
    if not rows:
        return []
    mtp = series("mtp_loss") if any(r.get("mtp_loss") for r in rows) else ([], [])
    losses = [(*series("main_loss"), "train (main)", "-"), (*mtp, "MTP (weighted)", "-"),
              (*series("val_loss"), "validation", "o-")]
    out = [figure("loss.png", "loss", "loss", losses)]
    if rows[0].get("max_vio"):
        steps = [r["step"] for r in rows]
        lines = [(steps, [r["max_vio"][i] for r in rows], f"MoE layer {i}", "-")
                 for i in range(len(rows[0]["max_vio"]))]
        lines += [(steps, [r["max_vio_mtp"][k] for r in rows], f"MTP module {k + 1}", "--")
                  for k in range(len(rows[0].get("max_vio_mtp") or []))]
        out.append(figure("expert_load.png", "expert load balance", "MaxVio (max load / mean - 1)",
                          lines))
    return out
