"""Write a grid of built-in synthetic galaxies to a PNG (for the docs and for looking at them).

Example:
    python benchmarks/synthetic_grid.py --out docs/images/synthetic_grid.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from galgen_lightning.data.synthetic import render_many  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/synthetic_grid.png", help="PNG path")
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--cols", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="index of the first galaxy")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)

    n = args.rows * args.cols
    images = render_many(range(args.start, args.start + n), seed=args.seed, image_size=args.image_size, workers=args.workers)
    fig, axes = plt.subplots(args.rows, args.cols, figsize=(1.5 * args.cols, 1.5 * args.rows))
    for ax, image in zip(axes.flat, images):
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, origin="lower", interpolation="nearest")
        ax.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.99, wspace=0.04, hspace=0.04)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
