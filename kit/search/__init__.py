"""Experiment search on Optuna, without MLflow: the search space file (`space`), where a study is stored
(`storage`), sampler, pruner and trial bookkeeping (`study`), the study's plots (`plots`) and the tuned
experiment file a winner becomes (`tuned`). `kit.workflows.tune` runs the study and records it in MLflow.
"""

from kit.search.space import Param, SearchSpace, load_space

__all__ = ["Param", "SearchSpace", "load_space"]
