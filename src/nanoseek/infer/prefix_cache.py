"""Prefix (context) cache: the latent KV of prompt prefixes, kept in fixed-size token blocks so
that a new prompt that starts like an earlier one skips their prefill, as DeepSeek's API context
caching does.

A block is keyed by a hash chained over every token before it (and the model's fingerprint), so a
key names a whole prefix, never a block out of context. Blocks live in an LRU in memory and,
optionally, in a directory on disk (DeepSeek keeps its context cache on disk): written through on
insert, read back on a memory miss, so the cache survives a restart. Disk files are written
atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from nanoseek.files import atomic_file
from nanoseek.model.model import Transformer


@dataclass
class Block:
    kv: Tensor  # (cache layers, block_size, kv_cache_dim): c_kv and k_pe, or a GQA model's k, v
    # (hidden,) final hidden state of the block's last token: the MTP module's input there
    h: Tensor


def fingerprint(model: Transformer, speculative: bool) -> str:
    """Identifies the model (config, dtype, a sample of every weight): a cache's namespace, so
    blocks on disk are never used with other weights; speculation is included since only then are
    MTP entries filled."""
    dtype = model.embed_tokens.weight.dtype
    h = hashlib.sha256(json.dumps(model.cfg.to_hf_dict(), sort_keys=True, default=str).encode())
    h.update(f"{dtype} {speculative}".encode())
    for name, p in model.state_dict().items():
        flat = p.detach().flatten()
        sampled = flat[:: max(1, flat.numel() // 64)].float().cpu().numpy()
        h.update(name.encode() + sampled.tobytes())
    return h.hexdigest()[:16]


class PrefixCache:
    def __init__(self, block_size: int = 32, max_blocks: int = 1024,
                 directory: str | Path | None = None, max_disk_blocks: int = 65536,
                 namespace: str = ""):
        if block_size < 1 or max_blocks < 1 or max_disk_blocks < 1:
            raise ValueError(f"prefix cache: block_size, max_blocks and max_disk_blocks must be "
                             f">= 1, got {block_size}, {max_blocks}, {max_disk_blocks}")
        self.block_size, self.max_blocks = block_size, max_blocks
        self.max_disk_blocks = max_disk_blocks
        self.namespace = namespace
        self.blocks: OrderedDict[str, Block] = OrderedDict()  # least recently used first
        self.dir = None if directory is None else Path(directory)
        self.disk: OrderedDict[str, None] = OrderedDict()
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            for f in self.dir.glob("*.tmp"):  # left by a killed write
                f.unlink(missing_ok=True)
            files = sorted(self.dir.glob("*.safetensors"), key=lambda f: f.stat().st_mtime)
            self.disk.update((f.stem, None) for f in files)

    def keys(self, tokens: list[int]) -> list[str]:
        """One key per full block of tokens: a sha256 chained over the namespace and all earlier
        tokens."""
        B, out = self.block_size, []
        digest = hashlib.sha256(self.namespace.encode()).digest()
        for j in range(len(tokens) // B):
            block = np.asarray(tokens[j * B:(j + 1) * B], dtype=np.int64).tobytes()
            digest = hashlib.sha256(digest + block).digest()
            out.append(digest.hex()[:32])
        return out

    def match(self, keys: list[str], device: torch.device | str = "cpu") -> list[Block]:
        """The cached blocks of the longest cached prefix of keys (from memory, else from disk)."""
        out = []
        for key in keys:
            block = self.blocks.get(key)
            if block is not None:
                self.blocks.move_to_end(key)
            elif key in self.disk:
                block = self._read(key, device)
                if block is None:
                    break
                self._remember(key, block)
            else:
                break
            out.append(block)
        return out

    def __contains__(self, key: str) -> bool:
        return key in self.blocks or key in self.disk

    def put(self, key: str, block: Block) -> None:
        if key in self.blocks:
            self.blocks.move_to_end(key)
            return
        block = Block(block.kv.clone(), block.h.clone())
        self._remember(key, block)
        if self.dir is not None and key not in self.disk:
            self._write(key, block)

    def _remember(self, key: str, block: Block) -> None:
        self.blocks[key] = block
        while len(self.blocks) > self.max_blocks:
            self.blocks.popitem(last=False)

    def _write(self, key: str, block: Block) -> None:
        path = self.dir / f"{key}.safetensors"
        with atomic_file(path) as tmp:
            tensors = {"kv": block.kv.contiguous().cpu(), "h": block.h.contiguous().cpu()}
            save_file(tensors, str(tmp))
        self.disk[key] = None
        while len(self.disk) > self.max_disk_blocks:
            old, _ = self.disk.popitem(last=False)
            (self.dir / f"{old}.safetensors").unlink(missing_ok=True)

    def _read(self, key: str, device: torch.device | str) -> Block | None:
        path = self.dir / f"{key}.safetensors"
        try:
            t = load_file(str(path), device=str(device))
            os.utime(path)  # most recently used, for the next process's ordering
        except Exception:  # deleted or damaged by another process: a miss, not a crash
            self.disk.pop(key, None)
            return None
        self.disk.move_to_end(key)
        return Block(t["kv"], t["h"])
