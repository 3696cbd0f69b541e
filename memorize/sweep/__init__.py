"""Sweeps: grid expansion, Submitit launching (local, debug, SLURM), resume, status, collection, figures."""

from memorize.sweep.launch import collect, run_sweep, sweep_status
from memorize.sweep.spec import GridPoint, ScoreConfig, SlurmConfig, SweepSpec, expand, load_spec

__all__ = ["GridPoint", "ScoreConfig", "SlurmConfig", "SweepSpec", "collect", "expand", "load_spec", "run_sweep",
           "sweep_status"]
