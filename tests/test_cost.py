"""The cost meter: V3's 2,664K H800-hours reproduced, the arithmetic checked by hand, runs, bad
input."""

import json

import pytest

from nanoseek.cli import main
from nanoseek.eval.cost import implied_mfu, parse_count, run_cost, training_cost
from nanoseek.model.config import get_preset
from nanoseek.model.counting import flops_per_token

V3_HOURS, V3_TOKENS = 2_664_000, 14_800_000_000_000  # the V3 report's pre-training row (H800)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOSEEK_CACHE", str(tmp_path / "cache"))  # never the user's ~/.cache


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


# ---- the V3 figure ----

def test_v3_report_mfu_is_implied_both_ways():
    cfg = get_preset("deepseek-v3")
    # 6*N + attention over the main model (the usual reproduction), and with the MTP module's ~4%
    # on top
    assert implied_mfu(cfg, V3_TOKENS, V3_HOURS, "H800") == pytest.approx(0.391, abs=0.001)
    with_mtp = implied_mfu(cfg, V3_TOKENS, V3_HOURS, "H800", include_mtp=True)
    assert with_mtp == pytest.approx(0.407, abs=0.001)


def test_cli_reproduces_v3_pretraining_hours(capsys):
    # the MFU the report implies, rounded as it is usually quoted
    argv = ["cost", "deepseek-v3", "--tokens", "14.8T", "--gpu", "H800", "--mfu", "0.39"]
    f = _json(capsys, [*argv, "--json"])
    assert f["tokens"] == V3_TOKENS and f["gpu"] == "H800" and f["peak_flops"] == 989.4e12
    assert abs(f["gpu_hours"] / V3_HOURS - 1) < 0.10
    assert f["gpu_hours"] == pytest.approx(V3_HOURS, rel=0.01)
    assert f["usd"] == pytest.approx(5.33e6, rel=0.01)  # the report: $5.328M for pre-training at $2
    assert f["v3_report"]["implied_mfu"] == pytest.approx(0.391, abs=0.001)

    assert main([*argv, "--gpus", "2048"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "GPU-hours" in line)
    hours = int(line.split()[1].replace(",", ""))
    assert abs(hours / V3_HOURS - 1) < 0.10
    # the assumptions are printed: formula, seq len, peak, MFU, price, MTP choice; and the reference
    for text in ("6 x N + attention", "seq len S        4,096",
                 "989.4 TFLOP/s per H800, dense bf16", "0.39  (given)", "$2.00 per GPU-hour",
                 "MTP module       not counted", "days on 2,048 GPUs",
                 "V3 report: 2,664K H800-hours for 14.8T tokens"):
        assert text in out, text


def test_defaults_are_stated(capsys):
    assert main(["cost", "deepseek-v3", "--tokens", "14.8T"]) == 0
    out = capsys.readouterr().out
    assert "(assumed: no --mfu given" in out and "(assumed: no --gpu given)" in out
    assert "per H100" in out


# ---- the arithmetic, by hand ----

def test_tiny_cost_against_hand_computation(capsys):
    # tiny: d 64, 4 heads, q_lora 32, kv_lora 32, qk 16+8, v 16, vocab 512; layer 0 dense (128),
    # layer 1 MoE (8 experts of 32, top-2, 1 shared). Active matmul weights N:
    # q_a, q_b, kv_a, kv_b, o
    attention = 64 * 32 + 32 * 4 * 24 + 64 * (32 + 8) + 32 * 4 * (16 + 16) + 4 * 16 * 64
    # top-2 experts + shared + router
    dense, moe = 3 * 64 * 128, 2 * 3 * 64 * 32 + 3 * 64 * 32 + 8 * 64
    n = 2 * attention + dense + moe + 512 * 64  # + lm_head
    assert n == 108_032
    seq = 256
    # 2 layers x 4 heads x (d_qk + d_v), causal: S/2 keys, x3 fwd+bwd
    fpt = 6 * n + 3 * 2 * 4 * (24 + 16) * seq
    assert fpt == 893_952 == flops_per_token(get_preset("tiny"), seq)
    hours = fpt * 3_000_000 / (312e12 * 0.25) / 3600  # A100 dense bf16 peak, MFU 0.25

    c = training_cost(get_preset("tiny"), 3_000_000, "A100", 0.25, usd_per_gpu_hour=1.5,
                      seq_len=seq)
    assert (c.flops_per_token, c.matmul_params, c.layers) == (fpt, n, 2)
    assert c.total_flops == fpt * 3_000_000
    assert c.gpu_hours == pytest.approx(hours, rel=1e-12)
    assert c.usd == pytest.approx(1.5 * hours, rel=1e-12)
    assert c.days(4) == pytest.approx(hours / 4 / 24)

    f = _json(capsys, ["cost", "tiny", "--tokens", "3M", "--gpu", "NVIDIA A100-SXM4-80GB", "--mfu",
                       "0.25", "--usd-per-hour", "1.5", "--seq-len", "256", "--json"])
    assert f["gpu_hours"] == pytest.approx(hours, rel=1e-12)
    assert f["usd"] == pytest.approx(1.5 * hours, rel=1e-12)
    assert f["v3_report"] is None

    # MTP counted: one more layer body, eh_proj 2d->d, the head again
    m = training_cost(get_preset("tiny"), 3_000_000, "A100", 0.25, seq_len=seq, include_mtp=True)
    n_mtp = n + 2 * 64 * 64 + attention + moe + 512 * 64
    assert m.flops_per_token == 6 * n_mtp + 3 * 3 * 4 * 40 * seq
    assert m.flops_per_token == flops_per_token(get_preset("tiny"), seq, include_mtp=True)


def test_counts():
    assert [parse_count(t) for t in ("14.8T", "500B", "2M", "10k", "1e9", "1_000", "7", "3G")] == [
        14_800_000_000_000, 500_000_000_000, 2_000_000, 10_000, 1_000_000_000, 1000, 7,
        3_000_000_000]
    for bad in ("14.8X", "", "T", "1.5", "0", "-3M"):
        with pytest.raises(ValueError):
            parse_count(bad)


# ---- a finished run ----

def _run(tmp_path, world_size=None, device="cpu"):
    run = tmp_path / "run"
    run.mkdir()
    rows = []
    for i, (dt, elapsed, m) in enumerate([(1.0, 1.0, 0.2), (1.0, 2.0, 0.2), (2.0, 4.0, 0.1)]):
        rows.append({"step": i + 1, "tokens": 1024 * (i + 1), "tokens_per_s": 1024 / dt,
                     "elapsed_s": elapsed, "mfu": m, "loss": 5.0, "device": device}
                    | ({"world_size": world_size} if world_size else {}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"model": "tiny", "seq_len": 64, "extra": {}}
    (run / "train_config.json").write_text(json.dumps(config))
    return run


def test_run_cost_from_metrics(tmp_path, capsys):
    r = run_cost(_run(tmp_path), usd_per_hour=3.0, gpu="H100")
    assert (r.steps, r.tokens, r.device, r.world_size) == (3, 3072, "cpu", 1)
    assert r.device_hours == pytest.approx(4 / 3600) and r.usd == pytest.approx(3 * 4 / 3600)
    assert r.tokens_per_s == pytest.approx(768)
    # (0.2*1 + 0.2*1 + 0.1*2) / 4 s: 768 tok/s where 1024 gave 0.2
    assert r.mfu == pytest.approx(0.15)
    # projection: the run's FLOPs (MTP counted, as the training loop counts them) at its MFU on an
    # H100
    fpt = flops_per_token(get_preset("tiny"), 64, include_mtp=True)
    assert r.on_gpu.gpu_hours == pytest.approx(fpt * 3072 / (989.4e12 * 0.15) / 3600)

    argv = ["cost", "--run", str(tmp_path / "run"), "--usd-per-hour", "3", "--gpu", "H100"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "768 tokens/s" in out and "device-hours     0.00111" in out and "world size 1" in out
    assert "the same 3.1K tokens on H100 at the run's MFU 0.15" in out


def test_run_cost_counts_every_device(tmp_path, capsys):
    run = _run(tmp_path, world_size=8, device="cuda:0")
    f = _json(capsys, ["cost", "--run", str(run), "--json"])
    assert f["world_size"] == 8 and f["device_hours"] == pytest.approx(8 * 4 / 3600)
    assert f["usd"] == pytest.approx(2.0 * 8 * 4 / 3600) and f["on_gpu"] is None
    assert f["price_unit"] == "GPU-hour"


def test_a_cpu_run_is_priced_per_machine_hour_not_per_gpu_hour(tmp_path, capsys):
    """A CPU run's processes share one machine: its wall-clock at a CPU machine's price, not $2 a
    device-hour."""
    from nanoseek.eval.cost import CPU_USD_PER_HOUR

    f = _json(capsys, ["cost", "--run", str(_run(tmp_path, world_size=2)), "--json"])
    assert f["price_unit"] == "machine-hour" and f["usd_per_hour"] == CPU_USD_PER_HOUR < 0.5
    assert f["device_hours"] == pytest.approx(2 * 4 / 3600)
    assert f["priced_hours"] == pytest.approx(4 / 3600)
    assert f["usd"] == pytest.approx(CPU_USD_PER_HOUR * 4 / 3600)
    assert main(["cost", "--run", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"${CPU_USD_PER_HOUR:.4g} per machine-hour (AWS c7i.large" in out


def test_run_cost_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="no such run directory"):
        run_cost(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="metrics.jsonl: missing"):
        run_cost(tmp_path / "empty")
    run = _run(tmp_path)
    (run / "metrics.jsonl").write_text('{"step": 1, "tokens": 5}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: line 1 lacks"):
        run_cost(run)
    (run / "metrics.jsonl").write_text('{"step": 1, "tokens": 5, "elapsed_s": 1.0}\n'
                                       '{"step": 2, "tokens": "x"}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: line 2 lacks"):
        run_cost(run)
    (run / "metrics.jsonl").write_text("{oops\n")
    with pytest.raises(ValueError, match="metrics.jsonl: unreadable"):
        run_cost(run)


# ---- bad input at the command line ----

def test_bad_cost_inputs_exit_2(tmp_path, capsys):
    def err(argv):
        assert main(argv) == 2
        e = capsys.readouterr().err
        assert e.startswith("nanoseek: error:")
        return e

    assert "'A10G'" in err(["cost", "tiny", "--tokens", "1M", "--gpu", "A10G"])
    assert "no bf16 peak on file for T4" in err(["cost", "tiny", "--tokens", "1M", "--gpu", "T4"])
    assert "no-such-model" in err(["cost", "no-such-model", "--tokens", "1M"])
    assert "--tokens is required" in err(["cost", "tiny"])
    assert "SPEC" in err(["cost"])
    assert "not both" in err(["cost", "tiny", "--tokens", "1M", "--run", str(tmp_path)])
    assert str(tmp_path / "missing") in err(["cost", "--run", str(tmp_path / "missing")])
    for argv, text in ((["--mfu", "0"], "(0, 1]"), (["--mfu", "1.5"], "(0, 1]"),
                       (["--mfu", "39"], "(0, 1]"),
                       (["--tokens", "14.8X"], "14.8X"), (["--usd-per-hour", "-1"], ">= 0")):
        with pytest.raises(SystemExit) as e:
            main(["cost", "tiny", "--tokens", "1M", *argv])
        assert e.value.code == 2 and text in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        training_cost(get_preset("tiny"), 1000, "H100", 0.0)
