"""Run VerificationMetric under torch.distributed (gloo, CPU, 2 processes) and write each rank's result.

Usage: ``python tests/helpers/ddp_metric_script.py OUTPUT_DIR``. Writes ``OUTPUT_DIR/rank{r}.json`` with the computed
values (floats) and whether a rank-local compute (no sync) failed, as it must because each rank saw only half
of the images. The data are sharded over pairs exactly like ``DistributedSampler(shuffle=False)``; the number
of pairs is odd, so the sampler pads rank 1 with a repeat of pair 0.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from fskd.systems.metric import VerificationMetric

WORLD_SIZE = 2
NUM_PAIRS = 45  # odd: DistributedSampler must pad
FOLDS = 5
EMBEDDING_DIM = 8
BATCH_PAIRS = 4


def make_data() -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """Fixed float32 embeddings of 2 * NUM_PAIRS images (pair i = images 2i, 2i+1), their flips and labels."""
    generator = torch.Generator().manual_seed(1234)
    issame = (torch.rand(NUM_PAIRS, generator=generator) < 0.5).tolist()
    base = torch.randn(NUM_PAIRS, EMBEDDING_DIM, generator=generator)
    embeddings = torch.randn(2 * NUM_PAIRS, EMBEDDING_DIM, generator=generator)
    for pair, same in enumerate(issame):
        embeddings[2 * pair] += 2 * base[pair]
        if same:
            embeddings[2 * pair + 1] += 2 * base[pair]
    flipped = embeddings + 0.5 * torch.randn(embeddings.shape, generator=generator)
    return embeddings, flipped, issame


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, port: int, output_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        embeddings, flipped, issame = make_data()
        sampler = DistributedSampler(range(NUM_PAIRS), num_replicas=WORLD_SIZE, rank=rank, shuffle=False)
        pair_indices = list(sampler)
        synced = VerificationMetric(issame, folds=FOLDS)
        local = VerificationMetric(issame, folds=FOLDS, sync_on_compute=False)
        for start in range(0, len(pair_indices), BATCH_PAIRS):
            pairs = torch.tensor(pair_indices[start : start + BATCH_PAIRS])
            image_indices = torch.stack((2 * pairs, 2 * pairs + 1), dim=1).reshape(-1)
            for metric in (synced, local):
                metric.update(image_indices, embeddings[image_indices], flipped[image_indices])
        values = {name: value.item() for name, value in synced.compute().items()}
        try:
            local.compute()
            local_error = ""
        except RuntimeError as error:
            local_error = str(error)
        record = {"rank": rank, "pair_indices": pair_indices, "values": values, "local_error": local_error}
        Path(output_dir, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def main(output_dir: str) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    # "fork" where available: the children inherit the imported torch/torchmetrics instead of re-importing
    # them (about 10 s on a busy 2-core machine); nothing in the parent has started threads or CUDA.
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _worker, args=(_free_port(), output_dir), nprocs=WORLD_SIZE, join=True, start_method=start_method
    )


if __name__ == "__main__":
    main(sys.argv[1])
