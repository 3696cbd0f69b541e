"""Sweeps: grid expansion, Submitit launching (local, debug, SLURM), resume, status, cancel, collection, figures."""

from memorize.sweep.launch import cancel_sweep, collect, run_sweep, sweep_status
from memorize.sweep.spec import GridPoint, ScoreConfig, SlurmConfig, SweepSpec, expand, load_spec

__all__ = ["GridPoint", "ScoreConfig", "SlurmConfig", "SweepSpec", "cancel_sweep", "collect", "expand", "load_spec",
           "run_sweep", "sweep_status"]
