"""The nanoseek command: info on presets, config files and checkpoint dirs; help, version,
errors."""

import json
import os
import re
import subprocess
import sys

import pytest

import nanoseek
from nanoseek.cli import main
from nanoseek.model.config import get_preset
from nanoseek.model.counting import count_params, flops_per_token, kv_cache_bytes_per_token


def test_info_deepseek_v3_table(capsys):
    assert main(["info", "deepseek-v3"]) == 0
    out = capsys.readouterr().out
    assert "671.0B" in out and "671,026,404,352" in out
    assert "37.6B" in out  # active
    assert "70,272" in out  # MLA latent bytes per token
    assert "56.9x" in out  # MHA / MLA


def test_info_json_has_exact_integers(capsys):
    assert main(["info", "deepseek-v3", "--json", "--seq-len", "4096"]) == 0
    f = json.loads(capsys.readouterr().out)
    cfg = get_preset("deepseek-v3")
    p = count_params(cfg)
    assert f["params"]["total"] == p.total and isinstance(f["params"]["total"], int)
    assert f["params"]["active"] == p.active
    assert f["params"]["mtp"] == p.mtp
    assert f["params"]["breakdown"] == p.breakdown
    assert f["flops_per_token"]["training"] == flops_per_token(cfg, 4096)
    assert f["kv_cache_bytes_per_token"]["mla_latent"] == 70_272
    assert f["kv_cache_bytes_per_token"]["mha_over_mla"] == pytest.approx(57, abs=0.2)


def test_info_options_change_the_figures(capsys):
    main(["info", "deepseek-v3", "--json", "--dtype-bytes", "1", "--gqa-groups", "4", "--seq-len",
          "128"])
    f = json.loads(capsys.readouterr().out)
    kv = kv_cache_bytes_per_token(get_preset("deepseek-v3"), dtype_bytes=1, gqa_groups=4)
    assert f["kv_cache_bytes_per_token"]["mla_latent"] == kv.mla_latent == 35_136
    assert f["kv_cache_bytes_per_token"]["gqa"] == kv.gqa
    assert f["flops_per_token"]["seq_len"] == 128


def test_info_reads_config_json_and_checkpoint_dir(tmp_path, capsys):
    cfg = get_preset("cpu-small")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    cfg.save(ckpt / "config.json")
    for spec in (str(ckpt / "config.json"), str(ckpt)):
        assert main(["info", spec, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["params"]["total"] == count_params(cfg).total


def test_bad_spec_exits_2_naming_it(tmp_path, capsys):
    assert main(["info", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nanoseek: error:") and "no-such-model" in err
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    assert main(["info", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_bad_option_exits_2():
    with pytest.raises(SystemExit) as e:
        main(["info", "tiny", "--seq-len", "0"])
    assert e.value.code == 2


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "start here" in out
    for name in ("info", "cost", "train", "tokenizer", "data", "chat", "generate", "serve", "sft",
                 "sample", "grpo", "distill", "eval", "pipeline"):
        assert re.search(rf"\n    {name}\s", out), name


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert nanoseek.__version__ in capsys.readouterr().out


def test_python_dash_m_subprocess():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "nanoseek", "info", "tiny", "--json"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    f = json.loads(r.stdout)
    assert f["params"]["total"] == count_params(get_preset("tiny")).total
    bad = subprocess.run([sys.executable, "-m", "nanoseek", "info", "nope"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_the_pretraining_journey_through_the_cli(tmp_path, capsys, monkeypatch):
    """gym corpus -> tokenizer -> token files -> train -> resume -> cost, as the README shows it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NANOSEEK_CACHE", str(tmp_path / "cache"))
    assert main(["data", "gym", "basic_arithmetic", "chain_sum", "--size", "150", "--out",
                 "gym.jsonl"]) == 0
    assert main(["tokenizer", "train", "--data", "gym.jsonl", "--vocab-size", "400", "--out", "tok",
                 "--quiet"]) == 0
    assert main(["data", "prepare", "--data", "gym.jsonl", "--tokenizer", "tok", "--out", "data",
                 "--val-fraction", "0.1", "--quiet"]) == 0
    (tmp_path / "run.toml").write_text('model = "tiny"\ndata = "data"\ntokenizer = "tok"\n'
                                       "seq_len = 64\nmicro_batch_size = 4\nwarmup_steps = 2\n"
                                       "eval_every = 5\n")
    args = ["train", "--config", "run.toml", "--max-steps", "5", "--out-dir", "run",
            "--no-progress", "--set", "bias_update_speed=0.01"]
    assert main(args) == 0
    assert "step 5: train loss" in capsys.readouterr().out
    assert main([*args[:4], "10", *args[5:], "--resume"]) == 0
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in metrics]
    assert steps == list(range(1, 11))
    cfg = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert cfg["extra"] == {"bias_update_speed": 0.01}
    assert cfg["seq_len"] == 64 and cfg["max_steps"] == 10
    capsys.readouterr()
    assert main(["cost", "--run", "run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 10


@pytest.mark.parametrize("argv, message", [
    (["data", "prepare", "--data", "c.txt", "--tokenizer", "tok", "--out", "d"],
     "tokenizer file not found"),
    (["tokenizer", "train", "--data", "nothing/*.txt", "--vocab-size", "300", "--out", "t"],
     "no files match"),
    (["data", "gym", "no_such_task", "--out", "g.jsonl"], "no_such_task"),
    (["train", "--data", "missing_dir"], "missing_dir: not a prepared data directory"),
    (["train", "--config", "bad.toml"], "bad.toml: unknown key(s) learning_rate"),
    (["train", "--data", "x", "--schedule", "linear"], "'schedule'"),
    (["tokenizer", "train", "--data", "c.txt", "--vocab-size", "100", "--out", "t"],
     "--vocab-size"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text('data = "x"\nlearning_rate = 0.1\n')
    (tmp_path / "c.txt").write_text("some text")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nanoseek: error: ") and message in err and "Traceback" not in err
    # nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml", "c.txt"]


def test_a_port_outside_1_to_65535_is_refused_at_parse_time(capsys):
    for port in ("99999", "0", "-1"):
        with pytest.raises(SystemExit) as e:
            main(["serve", "--port", port])
        assert e.value.code == 2 and "1..65535" in capsys.readouterr().err


def test_tokenizer_train_blames_the_missing_data_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["tokenizer", "train", "--data", "missing.txt", "--vocab-size", "400", "--out", "t"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "missing.txt" in err and "--vocab-size" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("command, out_dir", [("sft", "runs/sft"), ("distill", "runs/distill")])
def test_sft_and_distill_help_show_their_own_defaults(command, out_dir, capsys):
    """Not pretraining's (runs/pretrain, lr 0.003, 200 steps), and no --model/--tokenizer, which
    they refuse."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default '{out_dir}')" in out and "runs/pretrain" not in out
    assert "peak learning rate (default 0.001)" in out and "optimizer steps (default 100)" in out
    assert "linear warmup, in optimizer steps (default 10)" in out
    assert "--model" not in out and "--tokenizer" not in out


def test_the_final_line_prints_on_rank_0_only(capsys, monkeypatch):
    from nanoseek.cli.train import _summary

    last = {"step": 3, "loss": 2.5, "main_loss": 2.25}
    monkeypatch.setenv("RANK", "1")
    _summary(last, "run", "then")
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    _summary(last, "run", "then")
    assert "step 3: train loss 2.2500 (next-token, last step" in capsys.readouterr().out
