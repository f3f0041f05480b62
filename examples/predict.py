"""Predict: saved heads + a backbone checkpoint + images -> labels with probabilities.

What a deployment does: load the heads saved with ``save_heads`` (class names included), load
the backbone they were trained on and check it is that one (weights fingerprint), prepare the
images as in training, and print the top classes per head as a table or JSON.

Run with no arguments to first train small heads with the demo (random weights, synthetic
vehicles, into a temporary folder) and then predict its sample images:

    python examples/predict.py
    python examples/predict.py --heads heads.pt --checkpoint dinov2_vits14_pretrain.pth \\
        --images car1.jpg car2.jpg --top-k 3 --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from dinov2_heads.checkpoints import load_backbone
from dinov2_heads.data import Preprocess, get_preset, list_presets, load_batch
from dinov2_heads.demo import run_demo
from dinov2_heads.export import load_heads
from dinov2_heads.features import FrozenBackbone
from dinov2_heads.heads import MultiHead, predict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", help="a head checkpoint written by save_heads")
    parser.add_argument("--checkpoint", help="the backbone checkpoint the heads were trained on")
    parser.add_argument("--images", nargs="+", help="image files")
    parser.add_argument("--top-k", type=int, default=1, help="classes per head and image")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--demo-images", type=int, default=160, help="without --heads: images the demo trains on"
    )
    args = parser.parse_args(argv)

    if args.heads is None:
        # No heads given: train some with the demo, then predict its held-out samples.
        folder = Path(tempfile.mkdtemp(prefix="predict_"))
        demo = run_demo(
            folder,
            num_train=args.demo_images,
            num_heldout=16,
            epochs=4,
            num_samples=4,
        )
        args.heads, args.checkpoint = demo.files["heads"], demo.files["backbone"]
        args.images = sorted(str(p) for p in demo.files["samples"].glob("*.png"))
        print(f"trained demo heads in {folder} (random backbone weights)")
    elif args.checkpoint is None or not args.images:
        parser.error("--heads needs --checkpoint and --images too")

    saved = load_heads(args.heads)  # weights, class names, backbone identity, input size
    heads = saved.heads
    if heads is None:
        raise SystemExit(f"{args.heads} holds custom heads: build them and use load_into")
    backbone = load_backbone(args.checkpoint)
    saved.check_backbone(backbone)  # the same weights the heads were trained on, or an error
    frozen = FrozenBackbone(backbone, n_last_blocks=saved.n_last_blocks or 1)

    # Prepare the images as in training: the recorded preset, else the recorded size.
    recorded = saved.extra.get("preprocessing")
    if recorded in list_presets():
        transform = get_preset(recorded)
    elif saved.input_size is not None:
        transform = Preprocess(resize=saved.input_size)
    else:
        transform = get_preset("official_eval")
    batch = load_batch(args.images, transform, on_error="skip")

    with torch.no_grad():
        features = frozen(batch.images)
    named = heads if isinstance(heads, MultiHead) else {saved.head_names[0]: heads}
    predictions = {}
    for name, head in named.items():
        prediction = predict(head, features, top_k=min(args.top_k, head.num_classes))
        assert not isinstance(prediction, dict)
        assert prediction.names is not None  # the class names saved with the head
        predictions[name] = prediction
    results = [
        {
            "path": str(path),
            "heads": {
                name: [
                    {"label": label, "probability": round(float(score), 4)}
                    for label, score in zip(p.names[i], p.scores[i], strict=True)
                ]
                for name, p in predictions.items()
                if p.names is not None
            },
        }
        for i, path in enumerate(batch.paths)
    ]

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'image':<40} " + " ".join(f"{name:<20}" for name in named).rstrip())
        for row in results:
            cells = [
                ", ".join(f"{top['label']} {top['probability']:.2f}" for top in row["heads"][name])
                for name in named
            ]
            print(
                f"{Path(str(row['path'])).name:<40} "
                + " ".join(f"{cell:<20}" for cell in cells).rstrip()
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
