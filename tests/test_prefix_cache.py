"""The prefix cache on its own: chained block keys, LRU in memory, the disk tier (engine-level
exactness is in test_engine.py)."""

import torch

from nanoseek.infer.prefix_cache import PrefixCache


def test_prefix_cache_lru_and_damaged_files(tmp_path):
    from nanoseek.infer.prefix_cache import Block

    pc = PrefixCache(block_size=2, max_blocks=2, directory=tmp_path, max_disk_blocks=3)
    keys = pc.keys([1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert len(keys) == 4 and len(set(keys)) == 4 and pc.keys([1, 2, 3, 4])[1] == keys[1]
    assert pc.keys([9, 2, 3, 4])[1] != keys[1]  # a key names the whole prefix
    blocks = [Block(torch.full((1, 2, 3), float(i)), torch.zeros(4)) for i in range(4)]
    for k, b in zip(keys, blocks):
        pc.put(k, b)
    assert list(pc.blocks) == keys[2:] and list(pc.disk) == keys[1:]  # memory holds 2, disk 3
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    got = pc.match(keys)
    assert got == []  # the first block was evicted everywhere: no prefix
    (tmp_path / f"{keys[1]}.safetensors").write_bytes(b"garbage")
    fresh = PrefixCache(block_size=2, max_blocks=2, directory=tmp_path)
    assert fresh.match(keys[1:]) == []  # damaged file: a miss, not a crash
    assert float(fresh.match(keys[2:])[0].kv[0, 0, 0]) == 2.0
