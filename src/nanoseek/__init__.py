"""nanoseek: DeepSeek-V3 / R1 end to end in readable PyTorch.

Layers, low to high; a module imports only from its own layer's helpers and the layers below it:
  errors, files, hardware  bad-input errors; atomic writes and JSONL; GPU peaks, MFU
  model/                   the V3 model (MLA, DeepSeekMoE, MTP), its config, its counts
  tokenizer                byte-level BPE, special tokens, R1's chat template
  checkpoint               Hugging Face-layout safetensors checkpoints
  data                     corpora tokenized into token files, the packing loader
  infer/, tasks/           the inference engine; verifiable tasks and R1's rewards
  serve/, eval/            the OpenAI-compatible API and chat app; evaluation and cost
  train/                   pretraining, SFT and distillation, GRPO, rejection sampling
  pipeline                 the R1 recipe end to end
  cli                      the `nanoseek` command
"""

__version__ = "0.1.0"
