"""`python -m harness tune`: an Optuna study over a variant's search space, each trial an ordinary run.

space.py declares and narrows search spaces (no Optuna import, so variant files can use it); study.py opens
the study, samples, prunes and scores trials; worker.py is the trial loop a worker runs; launch.py starts
workers on this machine or on SLURM, follows them and writes the outcome (best presets, report).
"""
