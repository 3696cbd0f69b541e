"""Sweeps: a spec's grid (:mod:`.spec`), its directory (:mod:`.layout`), a cell's job (:mod:`.job`),
launching (:mod:`.launch`, on this machine :mod:`.local`, on a cluster :mod:`.slurm`, with the code
frozen by :mod:`.snapshot`), results and status (:mod:`.results`) and figures (:mod:`.figures`)."""

from memorize.sweep.launch import run_sweep
from memorize.sweep.results import collect, sweep_status
from memorize.sweep.slurm import cancel_sweep
from memorize.sweep.spec import GridPoint, ScoreConfig, SlurmConfig, SweepSpec, expand, load_spec

__all__ = ["GridPoint", "ScoreConfig", "SlurmConfig", "SweepSpec", "cancel_sweep", "collect", "expand", "load_spec",
           "run_sweep", "sweep_status"]
