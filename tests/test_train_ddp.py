"""Data-parallel training on two CPU processes (gloo), as torchrun would launch them: both ranks
end with identical parameters, rank 0 writes the checkpoint, and the global batch is split."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

CH = {4: 16, 8: 16, 16: 8}
STYLE = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, net: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), COLORGAN_INCEPTION=net)
    torch.set_num_threads(1)
    import torch.distributed as dist

    import fastlora
    from colorgan.train.continual import Continual, TrainConfig
    from colorgan.train.distributed import init_distributed
    from colorgan.train.loop import RunFolder
    from colorgan.train.loop import RunOptions
    from colorgan.train import near, strength

    near.BASE_SAMPLES, near.NEAR_GAP = 20, 1e9  # every task near: the anchors train on both ranks
    strength.PICK_SAMPLES, strength.CANDIDATES = 20, (0.0, 0.5)  # the pick changes the task
    if rank != 0:
        def measured_off_main(*_):
            raise AssertionError("the near check or the strength pick ran on a rank other than 0")
        near.find_network = measured_off_main

    info = init_distributed("cpu")
    cfg = TrainConfig(ckpt=f"{root}/base", tasks=f"a={root}/a", iter=2, batch=2, n_sample=2, sample_every=100,
                      save_every=100, log_every=1, d_reg_every=1, g_reg_every=1, subspace_freq=2)
    run = RunFolder(f"{root}/run", kind="train", is_main=info.is_main)
    dist.barrier()
    c = Continual(cfg, run, info, RunOptions(progress=False, device="cpu"), False)
    c.run()
    run.close()
    torch.save({"adapters": {k: v.detach().clone() for k, v in fastlora.task_state_dict(c.G, "a").items()},
                "ema": {k: v.detach().clone() for k, v in fastlora.task_state_dict(c.g_ema, "a").items()},
                "near_gaps": c.near_gaps, "strengths": c.strengths,
                "config": {n: fastlora.task_config(m, "a").strength for n, m in (("G", c.G), ("ema", c.g_ema))}},
               f"{root}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path, tiny_net_path):
    import numpy as np
    from PIL import Image

    from colorgan import Discriminator, Generator, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "base", Generator(16, STYLE, 2, channels=CH), Discriminator(16, channels=CH))
    (tmp_path / "a").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "a" / f"{i}.png")
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path), str(tiny_net_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    # the near check ran once, on rank 0, and both ranks trained with its verdicts
    assert r0["near_gaps"] == r1["near_gaps"] and set(r0["near_gaps"]) == {"a"}
    # the strength was picked once, on rank 0, and both ranks keep it in both generators
    assert r0["strengths"] == r1["strengths"] and r0["strengths"]["a"] in (0.0, 0.5)
    assert r0["config"] == r1["config"] == {"G": r0["strengths"]["a"], "ema": r0["strengths"]["a"]}
    for key in ("adapters", "ema"):
        assert r0[key].keys() == r1[key].keys()
        assert all(torch.equal(r0[key][k], r1[key][k]) for k in r0[key])
    G, _, info = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert info["tasks"] == ["a"]
    saved = fastlora_state(G)
    assert all(torch.equal(saved[k], r0["ema"][k]) for k in saved)
    assert any(v.abs().sum() > 0 for k, v in r0["adapters"].items() if k.endswith(".A"))
    import json

    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["world_size"] == 2
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 2  # rank 0 only


def fastlora_state(G):
    import fastlora

    return {k: v.detach() for k, v in fastlora.task_state_dict(G, "a").items()}
