"""What every training loop shares: config files and their errors, the run directory's start-up
(refusing to mix two runs, resuming from the newest complete checkpoint), checkpoint lookup."""

import json

import pytest

from nanoseek.train.pretrain import TrainConfig
from nanoseek.train.runtime import (
    TrainConfigError,
    World,
    latest_checkpoint,
    load_train_config,
    start_run,
)


def test_config_file_and_errors(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('data = "d"\nlr = 0.001\nmax_steps = 7\n')
    cfg = load_train_config(f, {"max_steps": 9, "seed": None}, TrainConfig)
    assert cfg.lr == 0.001 and cfg.max_steps == 9
    y = tmp_path / "run.yaml"
    y.write_text("data: d\nschedule: wsd\nextra:\n  bias_update_speed: 0.01\n")
    assert load_train_config(y, {}, TrainConfig).extra == {"bias_update_speed": 0.01}
    y.write_text("data: d\nlr: fast\n")
    with pytest.raises(TrainConfigError, match="'lr' must be float, got 'fast'"):
        load_train_config(y, {}, TrainConfig)
    y.write_text("data: [unclosed\n")
    with pytest.raises(TrainConfigError, match="run.yaml"):
        load_train_config(y, {}, TrainConfig)
    f.write_text('data = "d"\nlearning_rate = 0.1\n')
    with pytest.raises(TrainConfigError, match="unknown key.*learning_rate"):
        load_train_config(f, {}, TrainConfig)
    f.write_text('data = "d"\nlr = \n')
    with pytest.raises(TrainConfigError, match="run.toml"):
        load_train_config(f, {}, TrainConfig)
    with pytest.raises(TrainConfigError,
                       match="'batch_tokens': 1000 is invalid; must be a multiple of seq_len"):
        load_train_config(None, {"data": "d", "batch_tokens": 1000, "seq_len": 256}, TrainConfig)
    with pytest.raises(TrainConfigError, match="'schedule'"):
        load_train_config(None, {"data": "d", "schedule": "linear"}, TrainConfig)


def _fake_run(run, steps, checkpoints):
    """A run directory as a killed run leaves it: metrics past its last checkpoint, a half-written
    save (no state file) and a save's temporary."""
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in steps))
    for step in checkpoints:
        (run / "checkpoints" / f"step_{step:06d}").mkdir()
        (run / "checkpoints" / f"step_{step:06d}" / "train_state.json").write_text(
            json.dumps({"step": step}))
    (run / "checkpoints" / "step_000099").mkdir()  # killed mid-save: no train_state.json
    (run / "checkpoints" / ".step_000100.tmp-x").mkdir()


def test_resume_starts_from_the_newest_complete_checkpoint_and_cuts_metrics_back(tmp_path):
    run = tmp_path / "run"
    _fake_run(run, steps=range(1, 8), checkpoints=(3, 5))
    assert latest_checkpoint(run) == run / "checkpoints" / "step_000005"
    cfg = TrainConfig(data="d", out_dir=str(run))
    assert start_run(cfg, World(), resume=True, config_name="train_config.json") == (
        run / "checkpoints" / "step_000005")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5]
    assert not list((run / "checkpoints").glob(".step_*"))  # the killed save's temporary is gone
    assert json.loads((run / "train_config.json").read_text())["out_dir"] == str(run)


def test_a_new_run_never_mixes_into_an_earlier_one(tmp_path):
    run = tmp_path / "run"
    _fake_run(run, steps=range(1, 4), checkpoints=(2,))
    cfg = TrainConfig(data="d", out_dir=str(run))
    with pytest.raises(TrainConfigError, match="holds an earlier run.*--resume.*--overwrite"):
        start_run(cfg, World(), resume=False, config_name="train_config.json")
    assert latest_checkpoint(run) is not None  # refused: nothing touched
    fresh = TrainConfig(data="d", out_dir=str(run), overwrite=True)
    assert start_run(fresh, World(), resume=False, config_name="train_config.json") is None
    assert latest_checkpoint(run) is None and not (run / "metrics.jsonl").exists()
    empty = TrainConfig(data="d", out_dir=str(tmp_path / "new"))
    assert start_run(empty, World(), resume=True, config_name="train_config.json") is None


def test_resume_survives_a_half_written_metrics_line(tmp_path):
    """A run killed mid-write can leave the last metrics line cut short: resume drops it."""
    run = tmp_path / "run"
    _fake_run(run, steps=range(1, 5), checkpoints=(3,))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    cfg = TrainConfig(data="d", out_dir=str(run))
    start_run(cfg, World(), resume=True, config_name="train_config.json")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
