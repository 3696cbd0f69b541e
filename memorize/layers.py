"""The layers of the package, bottom to top: a module imports only from its own layer or those below.

    errors, io, progress,            bottom: the error users see, atomic writes, progress bars (plain lines
      distributed, graphs              into a log file), data-parallel processes, training steps and sampler
                                       calls captured as CUDA graphs
    config                           the schema, identity keys, the YAML mapping
    data, diffusion                  datasets and subsets; noise, preconditioning, loss
    models                           denoiser networks
    sampling, empirical,             samplers over the denoiser interface; closed-form denoisers
      local_score, sampler_bias        (memorizing and local), a sampler's bias where it is known
    metrics                          functions on arrays: search, the criteria, calibration, quality
    analysis, timescales, plots,     functions on results tables, and the figures drawn from them
      reference_figures                (reference_figures: trained denoisers against the closed-form ones)
    cell, train, pack, generate,     one cell directory: its data and checkpoints, training,
      score, compare, external_cell    sampling, scoring and comparing it; a model trained elsewhere as a cell
    criteria_bench                   the test bench for memorization criteria
    sweep                            specs, launching, results, sweep figures
    cli, pytest_plugin, api,         the `memorize` command (`python -m memorize` too), the pytest fixture,
      __main__                         the notebook API

Figures sit below the cell because scoring a cell draws its nearest-neighbour figure; they import
nothing that knows about cells. ``tests/test_layers.py`` walks every import and holds this order.
"""

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "io", "progress", "layers", "distributed", "graphs"),
    ("config",),
    ("data", "diffusion"),
    ("models",),
    ("sampling", "empirical", "local_score", "sampler_bias"),
    ("metrics",),
    ("analysis", "timescales", "plots", "reference_figures"),
    ("cell", "train", "pack", "generate", "score", "compare", "external_cell"),
    ("criteria_bench",),
    ("sweep",),
    ("cli", "pytest_plugin", "api", "__main__"),
)


def layer_of(module: str) -> int:
    """The layer index of ``memorize.<name>[.…]``; a module no layer names is an error."""
    top = module.split(".")[1] if module.startswith("memorize.") else module
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise KeyError(f"{module}: in no layer of memorize.layers.LAYERS")
