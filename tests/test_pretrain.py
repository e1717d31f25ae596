"""Pretraining: the tiny model learns, a killed run resumes bit for bit, torchrun matches one
process."""

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nanoseek.checkpoint import load_model
from nanoseek.data import PackedLoader, prepare_corpus
from nanoseek.train.pretrain import TrainConfig, TrainConfigError, lr_at, train, val_loss
from nanoseek.train.runtime import World, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from nanoseek.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("corpus")
    lines = [f"{a} + {b} = {a + b}" for a in range(90) for b in range(0, 90, 3)]
    for i in range(4):
        (root / f"part{i}.txt").write_text("\n\n".join(lines[i::4]))
    tok = train_tokenizer(lines, vocab_size=320)
    tok.save(root / "tok")
    prepare_corpus(str(root / "part*.txt"), tok, root / "data", val_fraction=0.05, seed=0,
                   txt_mode="blocks", progress=False)
    return root


def config(data_dir, out, **kw) -> TrainConfig:
    base = dict(model="tiny", data=str(data_dir / "data"), tokenizer=str(data_dir / "tok"),
                out_dir=str(out), seq_len=64, micro_batch_size=8, max_steps=40, lr=3e-3,
                warmup_steps=5, eval_every=20, eval_batches=4, save_every=0, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_model_learns(data_dir, tmp_path):
    cfg = config(data_dir, tmp_path / "run", max_steps=60, eval_every=30, sample_every=60)
    from nanoseek.model import get_preset
    from nanoseek.model.model import Transformer

    torch.manual_seed(cfg.seed)
    fresh = Transformer(get_preset("tiny"))
    val = PackedLoader(Path(cfg.data) / "val.bin", cfg.seq_len, cfg.micro_batch_size,
                       seed=cfg.seed + 1)
    initial = val_loss(fresh, val, cfg.eval_batches, torch.device("cpu"), World())
    before = signal.getsignal(signal.SIGINT)
    model, last = train(cfg)
    assert signal.getsignal(signal.SIGINT) is before  # the caller's Ctrl-C handling is given back
    assert last["val_loss"] < 0.5 * initial, (initial, last["val_loss"])
    # tiny: one MoE layer, one MTP module
    assert len(last["max_vio"]) == 1 and len(last["max_vio_mtp"]) == 1
    rows = [json.loads(line)
            for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 61))
    for key in ("loss", "main_loss", "mtp_loss", "balance_loss", "lr", "grad_norm", "tokens_per_s",
                "max_vio", "mtp_acc", "tokens", "elapsed_s"):
        assert key in rows[-1], key
    assert "sample" in rows[-1] and isinstance(rows[-1]["sample"], str)
    assert (tmp_path / "run" / "loss.png").exists()
    assert (tmp_path / "run" / "expert_load.png").exists()
    ck = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [p.name for p in ck] == ["step_000060"]  # the end of a run is always saved
    assert (ck[0] / "tokenizer.json").exists() and (ck[0] / "model.safetensors").exists()


def test_gradient_accumulation_matches_one_big_batch(data_dir, tmp_path):
    kw = dict(max_steps=6, eval_every=0, warmup_steps=1)
    train(config(data_dir, tmp_path / "big", micro_batch_size=8, **kw))
    # 4 micro-batches a step
    train(config(data_dir, tmp_path / "acc", micro_batch_size=2, batch_tokens=8 * 64, **kw))
    big, acc = metrics(tmp_path / "big"), metrics(tmp_path / "acc")
    assert acc[6]["tokens"] == big[6]["tokens"] == 6 * 8 * 64
    for s in range(1, 7):
        assert abs(big[s]["loss"] - acc[s]["loss"]) <= 1e-5, s
        assert big[s]["max_vio"] == acc[s]["max_vio"], s


def test_regional_compile_trains_as_eager(data_dir, tmp_path):
    """compile=True compiles each decoder block (a GPU run's speed-up): the MoE counts tokens with
    static shapes there, and the losses, expert loads and correction biases are eager's."""
    kw = dict(max_steps=4, eval_every=0, warmup_steps=1)
    eager, _ = train(config(data_dir, tmp_path / "eager", **kw))
    compiled, _ = train(config(data_dir, tmp_path / "compiled", compile=True, **kw))
    a, b = metrics(tmp_path / "eager"), metrics(tmp_path / "compiled")
    for s in range(1, 5):
        assert abs(a[s]["loss"] - b[s]["loss"]) <= 1e-4, s
        assert a[s]["max_vio"] == pytest.approx(b[s]["max_vio"], abs=1e-3), s
    for m, n in zip(eager.moe_layers(), compiled.moe_layers()):
        torch.testing.assert_close(m.gate.e_score_correction_bias, n.gate.e_score_correction_bias)


def test_lr_schedules():
    cfg = TrainConfig(data="x", lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(110, cfg) == pytest.approx(0.1)
    wsd = TrainConfig(data="x", lr=1.0, warmup_steps=10, max_steps=110, schedule="wsd",
                      decay_fraction=0.5)
    assert lr_at(54, wsd) == 1.0 and lr_at(110, wsd) == pytest.approx(0.1)
    assert lr_at(60, TrainConfig(data="x", schedule="constant", lr=0.5)) == 0.5


def test_a_second_run_into_a_run_directory_is_refused_or_overwritten(data_dir, tmp_path, capsys):
    """A run into a directory that holds one, without resume, would mix the two (the old checkpoints
    stay, a later --resume continues them, metrics.jsonl skips steps): refused, unless overwrite
    clears the old run's outputs first (and only those)."""
    from nanoseek.cli import main

    cfg = config(data_dir, tmp_path / "run", max_steps=3, eval_every=0)
    train(cfg)
    argv = ["train", "--data", cfg.data, "--out-dir", cfg.out_dir, "--seq-len", "64",
            "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds an earlier run" in err and "--resume" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(TrainConfigError, match="pass one of them"):
        train(dataclasses.replace(cfg, overwrite=True), resume=True)
    (tmp_path / "run" / "data").mkdir()  # not the run's own (sft prepares its data here)
    train(dataclasses.replace(cfg, max_steps=2, overwrite=True))
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_000002"]
    assert sorted(metrics(tmp_path / "run")) == [1, 2]
    assert (tmp_path / "run" / "data").is_dir()


@pytest.mark.parametrize("setting, message", [
    ("hiden_size=64", "config field 'hiden_size': no such field; did you mean hidden_size"),
    ("moe_intermediate_size=30", "'moe_intermediate_size': must be a multiple of 8"),
])
def test_a_bad_model_setting_is_one_clear_line(data_dir, tmp_path, capsys, setting, message):
    from nanoseek.cli import main

    argv = ["train", "--data", str(data_dir / "data"), "--out-dir", str(tmp_path / "run"),
            "--seq-len", "64", "--max-steps", "1", "--no-progress", "--set", setting]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_the_bar_names_its_losses_as_metrics_jsonl_does(tmp_path):
    """The bar shows the next-token loss as main_loss: "loss" in metrics.jsonl (and the final line)
    is the objective, MTP and balance terms included."""
    from nanoseek.train.telemetry import Telemetry

    tel = Telemetry(tmp_path, TrainConfig(data="x", progress=False), False, total_steps=1,
                    start_step=0, device=torch.device("cpu"))
    post = tel._postfix({"step": 1, "loss": 3.0, "main_loss": 2.5, "tokens_per_s": 10.0,
                         "val_loss": 2.625})
    assert post["main_loss"] == "2.500" and post["val_loss"] == "2.625" and "loss" not in post


def test_sequence_longer_than_the_model_allows_is_refused(data_dir, tmp_path):
    with pytest.raises(TrainConfigError, match="seq_len.*max_position_embeddings"):
        train(config(data_dir, tmp_path, seq_len=4096))


def test_block_causal_attention_trains_on_its_own_documents(data_dir, tmp_path):
    """attn_mask=block_causal: the model learns as well, and its validation loss is computed with
    the same mask (so it differs from the causal one of the same weights)."""
    from nanoseek.data import read_meta
    from nanoseek.model.model import Documents

    eos = read_meta(data_dir / "data")["eos_id"]
    model, last = train(config(data_dir, tmp_path / "run", attn_mask="block_causal",
                               max_steps=40))
    first = metrics(tmp_path / "run")[1]
    assert last["main_loss"] < 0.8 * first["main_loss"]
    val = PackedLoader(Path(data_dir / "data" / "val.bin"), 64, 4, seed=1)
    x, y = val.next_batch()
    assert Documents.starts(x, eos).sum() > x.shape[0]  # rows really hold several documents
    with torch.no_grad():
        own = model(x, y, documents=Documents.starts(x, eos)).main_loss
        causal = model(x, y).main_loss
    assert own != causal
    with pytest.raises(TrainConfigError, match="attn_mask.*causal or block_causal"):
        config(data_dir, tmp_path / "bad", attn_mask="document").validate()


def run_script(args: list[str], out: Path) -> subprocess.Popen:
    code = ("import sys, json; from nanoseek.train.pretrain import TrainConfig, train; "
            "kw = json.loads(sys.argv[1]); resume = kw.pop('resume', False); "
            "train(TrainConfig(**kw), resume=resume)")
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})


def metrics(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def test_killed_run_resumes_exactly(data_dir, tmp_path):
    kw = dict(model="tiny", data=str(data_dir / "data"), out_dir=str(tmp_path / "a"), seq_len=64,
              micro_batch_size=4, max_steps=16, lr=3e-3, warmup_steps=2, eval_every=0, save_every=4,
              keep_last=2, progress=False)
    assert run_script([json.dumps(kw)], tmp_path).wait() == 0  # uninterrupted

    kw_b = dict(kw, out_dir=str(tmp_path / "b"))
    p = run_script([json.dumps(kw_b)], tmp_path)
    deadline = time.time() + 120
    while not (tmp_path / "b" / "checkpoints" / "step_000008").exists():
        assert p.poll() is None and time.time() < deadline, "run ended before its second checkpoint"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)  # no chance to clean up
    p.wait()
    assert run_script([json.dumps(dict(kw_b, resume=True))], tmp_path).wait() == 0
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert sorted(b) == list(range(1, 17))
    for s in range(9, 17):
        assert b[s]["loss"] == a[s]["loss"], s  # bitwise on CPU
    wa = load_file(tmp_path / "a" / "checkpoints" / "step_000016" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "checkpoints" / "step_000016" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len(list((tmp_path / "b" / "checkpoints").iterdir())) == 2  # keep_last

    # killed at random moments while it checkpoints every step (so most kills land inside a save):
    # each time the latest checkpoint loads, and the run still ends with the uninterrupted weights
    kw_c = dict(kw, out_dir=str(tmp_path / "c"), save_every=1)
    rng = random.Random(0)
    for _ in range(3):
        p = run_script([json.dumps(dict(kw_c, resume=True))], tmp_path)
        while not list((tmp_path / "c").glob("checkpoints/step_*")) and p.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.5))
        p.send_signal(signal.SIGKILL)
        p.wait()
        load_model(latest_checkpoint(tmp_path / "c"))
    assert run_script([json.dumps(dict(kw_c, resume=True))], tmp_path).wait() == 0
    wc = load_file(tmp_path / "c" / "checkpoints" / "step_000016" / "model.safetensors")
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    # the killed saves' temporaries were cleared
    assert not list((tmp_path / "c" / "checkpoints").glob(".*"))


def test_packed_documents_train_and_resume_exactly(data_dir, tmp_path):
    """pack=documents: the loader's position travels in the checkpoint like the rows loader's, so
    a run stopped and resumed takes the same steps as one that was not; tokens count the padded
    batches the steps computed."""
    kw = dict(pack="documents", schedule="constant", eval_every=0, save_every=4, max_steps=8)
    _, a = train(config(data_dir, tmp_path / "a", **kw))
    train(config(data_dir, tmp_path / "b", **dict(kw, max_steps=4)))
    _, b = train(config(data_dir, tmp_path / "b", **kw), resume=True)
    ra, rb = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert sorted(rb) == list(range(1, 9))
    assert [ra[s]["loss"] for s in range(5, 9)] == [rb[s]["loss"] for s in range(5, 9)]
    seen = [r["tokens"] - ra.get(s - 1, {"tokens": 0})["tokens"] for s, r in ra.items()]
    assert all(0 < t <= 8 * 64 and t % 16 == 0 for t in seen), seen


def test_sigterm_saves_and_exits(data_dir, tmp_path):
    kw = dict(model="tiny", data=str(data_dir / "data"), out_dir=str(tmp_path / "r"), seq_len=64,
              micro_batch_size=4, max_steps=100000, eval_every=0, save_every=0, progress=False)
    p = run_script([json.dumps(kw)], tmp_path)
    deadline = time.time() + 120
    log = tmp_path / "r" / "metrics.jsonl"
    while not log.exists() or not log.read_text():
        assert p.poll() is None and time.time() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 0, p.stderr.read().decode()[-2000:]
    saved = sorted((tmp_path / "r" / "checkpoints").iterdir())
    assert len(saved) == 1 and int(saved[0].name.split("_")[1]) == max(metrics(tmp_path / "r"))


@pytest.mark.parametrize("fsdp", [False, True])
def test_torchrun_two_ranks_match_one_process(data_dir, tmp_path, fsdp):
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun is not installed")
    kw = dict(model="tiny", data=str(data_dir / "data"), seq_len=64, max_steps=6, lr=3e-3,
              warmup_steps=1, eval_every=0, save_every=6, progress=False, fsdp=fsdp)
    one = dict(kw, out_dir=str(tmp_path / "one"), micro_batch_size=8)
    assert run_script([json.dumps(one)], tmp_path).wait() == 0
    two = dict(kw, out_dir=str(tmp_path / "two"), micro_batch_size=4)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    script = tmp_path / "go.py"
    script.write_text("import sys, json\nfrom nanoseek.train.pretrain import TrainConfig, train\n"
                      "model, _ = train(TrainConfig(**json.loads(sys.argv[1])))\n"
                      "import torch, os\n"
                      "b = torch.cat([m.gate.e_score_correction_bias\n"
                      "               for m in model.moe_layers()])\n"
                      "torch.save(b, sys.argv[2] + f'/bias{os.environ[\"RANK\"]}.pt')\n")
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script),
                          json.dumps(two), str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    # what `nanoseek cost --run` multiplies by
    assert a[6]["world_size"] == 1 and b[6]["world_size"] == 2
    for s in range(1, 7):
        assert abs(a[s]["loss"] - b[s]["loss"]) <= 1e-5, (s, a[s]["loss"], b[s]["loss"])
    b0, b1 = torch.load(tmp_path / "bias0.pt"), torch.load(tmp_path / "bias1.pt")
    assert torch.equal(b0, b1)
    wa = load_file(tmp_path / "one" / "checkpoints" / "step_000006" / "model.safetensors")
    wb = load_file(tmp_path / "two" / "checkpoints" / "step_000006" / "model.safetensors")
    bias = [k for k in wa if k.endswith("e_score_correction_bias")]
    assert all(torch.equal(wa[k], wb[k]) for k in bias)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
