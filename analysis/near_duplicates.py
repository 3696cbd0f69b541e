"""Recipe: how many near-duplicate pairs the rule of ``data.dedup: near`` finds in a dataset.

    .venv/bin/python analysis/near_duplicates.py [--data digits|mnist|cifar10|folder|npz] [--root PATH]
        [--threshold 0.98] [--figure PATH]

(run it with the Python that has memorize installed). The descriptor is each image's pixel values, pooled
to at most 16 x 16, centred and normalized (memorize.data.near_duplicates); two images are near-copies when
their cosine is at least the threshold. Prints, at the threshold and at a few others, the near-duplicate
pairs, the images in at least one pair, and the images ``data.dedup: near`` drops (each near-copy of an
image kept before it); draws the 16 closest pairs with their cosines into ``--figure`` (default
near_duplicates_<data>.png). Exact duplicates are left out first, as the split does.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = (0.95, 0.97, 0.98, 0.99, 0.995)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memorize.cli.flags import cosine, figure_file, path_text
    from memorize.cli.recipes import recipe_parser
    from memorize.config import ConfigError, DataConfig
    from memorize.data import DatasetError, load_dataset, unique_indices
    from memorize.data.near_duplicates import first_of_near_copies, near_descriptors, near_duplicate_pairs
    from memorize.io import atomic_save_figure

    parser = recipe_parser(__doc__)
    parser.add_argument("--data", default="digits", choices=["digits", "mnist", "cifar10", "folder", "npz"],
                        help="the dataset (data.name; default digits)")
    parser.add_argument("--root", type=path_text, help="its local files (data.root) for mnist, cifar10, folder and npz")
    parser.add_argument("--threshold", type=cosine, default=0.98, help="near-copy cosine (data.near_threshold)")
    parser.add_argument("--figure", type=figure_file,
                        help="where to draw the closest pairs, its format from its suffix (default "
                             "near_duplicates_<data>.png)")
    args = parser.parse_args()
    if args.root is not None and args.data == "digits":  # else counted on scikit-learn's digits without a word
        parser.error("--root: dataset 'digits' ships with scikit-learn and reads no files; give --data npz, folder, "
                     "mnist or cifar10 for files of your own")
    try:
        ds = load_dataset(DataConfig(name=args.data, root=args.root))
    except (ConfigError, DatasetError) as err:
        parser.error(str(err).replace("data.root", "--root"))
    keep = unique_indices(ds.data)
    desc = near_descriptors(ds.data[keep])
    print(f"{args.data}: {len(ds.data):,} images, {len(ds.data) - len(keep):,} exact duplicates left out")
    print(f"{'cosine >=':>10} {'pairs':>8} {'images in a pair':>17} {'dropped by dedup: near':>23}")
    for threshold in sorted(set(THRESHOLDS) | {args.threshold}):
        pairs = near_duplicate_pairs(desc, threshold)
        dropped = len(keep) - len(first_of_near_copies(desc, threshold))
        mark = "  <- --threshold" if threshold == args.threshold else ""
        print(f"{threshold:>10} {len(pairs):>8,} {len(np.unique(pairs)):>17,} {dropped:>23,}{mark}")
    pairs = near_duplicate_pairs(desc, min(THRESHOLDS + (args.threshold,)))
    if not ds.is_image or not len(pairs):
        return
    cos = np.einsum("ij,ij->i", desc[pairs[:, 0]], desc[pairs[:, 1]])
    closest = np.argsort(-cos, kind="stable")[:16]
    fig, axes = plt.subplots(2, 2 * 8, figsize=(16, 2.8))
    for k, (ax_a, ax_b) in enumerate(zip(axes.flat[0::2], axes.flat[1::2])):
        for ax in (ax_a, ax_b):
            ax.axis("off")
        if k >= len(closest):
            continue
        i, j = keep[pairs[closest[k]]]
        for ax, idx in ((ax_a, i), (ax_b, j)):
            image = ds.data[idx].permute(1, 2, 0).squeeze(-1).numpy()
            ax.imshow((image + 1) / 2 if image.ndim == 3 else image, cmap="gray_r" if image.ndim == 2 else None)
        ax_a.set_title(f"{cos[closest[k]]:.3f}: {i}, {j}", fontsize=7, loc="left")
    fig.suptitle(f"{args.data}: the closest near-duplicate pairs (pixel correlation, pooled to at most 16 x 16)")
    out = args.figure or f"near_duplicates_{args.data}.png"
    atomic_save_figure(out, fig, dpi=120)
    print(f"figure: {out}")


if __name__ == "__main__":
    main()
