"""Recipe: do the quality metrics tell the regimes apart? Scores five image sets against a sweep's
held-out images, on the features its scores used:

    .venv/bin/python analysis/regimes.py runs/digits

- ``real``: as many real images as each cell has samples, from the pool (never held out);
- ``trained, largest N``: the samples of the largest model's largest-N cell (generalizing);
- ``gaussian``: samples of the Gaussian (Wiener) denoiser of that cell's training set, same sampler;
- ``noise``: uniform noise in [-1, 1];
- ``trained, smallest N``: the samples of the largest model's smallest-N cell (memorizing).

Expected order of FID and KID (lower is better): real, trained largest N, gaussian, noise; the
memorizing cell with high precision and low recall. Prints the table and writes DIR/regimes.csv.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from memorize.cell import CellPaths, load_cell_data, read_config, resolve_device
from memorize.cli.flags import path_text
from memorize.cli.recipes import recipe_parser, sweep_results
from memorize.config import ConfigError, SampleConfig, from_dict
from memorize.generate import read_samples, sample_cell
from memorize.io import atomic_write_text
from memorize.score import QUALITY_K, feature_embedder, quality_summary, resolve_features


def main() -> None:
    parser = recipe_parser(__doc__)
    parser.add_argument("sweep", type=path_text, help="a finished sweep directory (memorize sweep run ... --out DIR)")
    parser.add_argument("--device", default="cpu", help="where the features and the Gaussian samples are "
                        "computed: cpu (default), auto or cuda[:N]")
    args = parser.parse_args()
    try:
        device = str(resolve_device(args.device))
    except ConfigError as err:
        parser.error(str(err))
    out = Path(args.sweep)
    results = sweep_results(parser, out)
    largest = results[results.params == results.params.max()]
    rows = {"largest": largest.loc[largest.n_train.idxmax()], "smallest": largest.loc[largest.n_train.idxmin()]}
    evals = {k: json.loads((out / "cells" / r["cell"] / "evals" / f"{r['eval']}.json").read_text())
             for k, r in rows.items()}
    root = out / "cells" / rows["largest"]["cell"]
    data = load_cell_data(read_config(root), CellPaths(root))
    features = resolve_features(evals["largest"]["settings"]["score"]["features"], data)
    embed, record = feature_embedder(features, data, CellPaths(root).feature_cache, device, progress=True)
    heldout = embed(data.heldout)

    def drawn(key: str) -> np.ndarray:
        return read_samples(out / "cells" / rows[key]["cell"] / evals[key]["files"]["samples"])["samples"]

    trained = drawn("largest")
    num = len(trained)
    sample_cfg = from_dict(SampleConfig, evals["largest"]["config"]["sample"])
    gaussian = read_samples(sample_cell(root, sample_cfg, "gaussian", name="gaussian-regimes", device=device,
                                        progress=True))["samples"]
    sets = {
        "real (pool images)": data.train[:num].numpy(),
        f"trained, N = {rows['largest']['n_train']}": trained,
        f"gaussian denoiser, N = {rows['largest']['n_train']}": gaussian,
        "uniform noise": np.random.default_rng(0).uniform(-1, 1, size=trained.shape).astype(np.float32),
        f"trained, N = {rows['smallest']['n_train']}": drawn("smallest"),
    }
    table = pd.DataFrame([{"set": name, **{k: v for k, v in quality_summary(embed(images), heldout, device,
                                                                            QUALITY_K).items()
                                           if k in ("n_samples", "fid", "kid", "precision", "recall")}}
                          for name, images in sets.items()])
    atomic_write_text(out / "regimes.csv", table.to_csv(index=False))
    accuracy = f", held-out accuracy {record['heldout_accuracy']:.3f}" if record else ""
    print(f"against {len(heldout)} held-out images on {features} features{accuracy}; model "
          f"{rows['largest']['model']}:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"written: {out / 'regimes.csv'}")


if __name__ == "__main__":
    main()
