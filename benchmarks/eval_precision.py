"""Evaluation precision on real faces: a real pretrained recogniser's embeddings in float32 and under bf16 autocast
(what validation computed under ``--trainer.precision bf16-mixed`` before ``eval_fp32``), and the verification
accuracies they give.

Not a timing: for each database (AT&T/ORL, Extended Yale B with moderate light) and resolution (112/56/28/14 px,
nearest down and up, as validation), every face is embedded with its mirror image both ways; the table gives the
median and largest relative change of an embedding, the fp32 accuracy of seed 0's pairs
(`fskd.data.real_faces.verification_pairs`), and the bf16 - fp32 accuracy difference for each of ``--seeds``
pair seeds, in points, in both protocols.

Run: ``python benchmarks/eval_precision.py --teacher runs/teachers/mobilefacenet.ckpt
--data ../shared/data/real-faces`` (the teacher from ``fskd import-teacher``; see the README).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fskd.commands.realfaces.scoring import embed  # noqa: E402
from fskd.data.real_faces import face_112, list_orl, list_yale, verification_pairs  # noqa: E402
from fskd.evaluation.verification import evaluate_pairs  # noqa: E402
from fskd.models.loading import load_backbone  # noqa: E402


def embeddings(model: torch.nn.Module, faces: torch.Tensor, resolution: int, bf16: bool,
               batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """`fskd.commands.realfaces.scoring.embed` (the faces degraded as validation, and their mirror images), in
    float32 or under bf16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return embed(model, faces, resolution, batch_size=batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True, help="fskd checkpoint of a pretrained recogniser")
    parser.add_argument("--data", type=Path, required=True, help="folder holding orl_faces/ and "
                        "extended_yale_b_cropped/")
    parser.add_argument("--seeds", type=int, default=5, help="pair seeds per condition")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = load_backbone(args.teacher).eval()
    print("| database | px | embedding change, median / max | fp32 acc (seed 0), authors / insightface | "
          "bf16 - fp32, authors (points) | bf16 - fp32, insightface (points) |")
    print("|---|---|---|---|---|---|")
    for name, images in (("ORL", list_orl(args.data)), ("Extended Yale B", list_yale(args.data))):
        faces = torch.stack([face_112(image) for image in images])
        pair_sets = [verification_pairs(images, seed=seed) for seed in range(args.seeds)]
        for resolution in (112, 56, 28, 14):
            views = {bf16: embeddings(model, faces, resolution, bf16) for bf16 in (False, True)}
            change = np.linalg.norm(views[True][0] - views[False][0], axis=1) / np.linalg.norm(views[False][0],
                                                                                                axis=1)
            differences: dict[str, list[float]] = {"fskd": [], "insightface": []}
            for seed, (pairs, issame) in enumerate(pair_sets):
                index = np.asarray(pairs).reshape(-1)
                accuracy = {bf16: evaluate_pairs(views[bf16][0][index], views[bf16][1][index], np.asarray(issame))
                            for bf16 in views}
                if seed == 0:
                    first = accuracy[False]
                for protocol, values in differences.items():
                    values.append(100 * (accuracy[True][protocol][0] - accuracy[False][protocol][0]))
            print(f"| {name} ({len(images)} faces, {len(pair_sets[0][1])} pairs) | {resolution} | "
                  f"{100 * np.median(change):.2f} % / {100 * change.max():.2f} % | "
                  f"{100 * first['fskd'][0]:.2f} / {100 * first['insightface'][0]:.2f} | "
                  f"{' '.join(f'{d:+.2f}' for d in differences['fskd'])} | "
                  f"{' '.join(f'{d:+.2f}' for d in differences['insightface'])} |", flush=True)
    print(f"\n* torch {torch.__version__}, {torch.get_num_threads()} threads; teacher {args.teacher}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
