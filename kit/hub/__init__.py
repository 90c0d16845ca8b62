"""Trained models in and out of MLflow: load any model (`load_segmenter`), log a run's model as an
MLflow Model (`log_run_model`), register it, serve it (`serve`: the pyfunc).

A layer between the stages and the building blocks: it reads and writes runs (kit.tracking) in terms of
model objects (`kit.inference.contract.SegmentationModel`); stages use it, building blocks never do.
"""

from kit.hub.load import load_model_folder, load_segmenter, model_of_experiment, model_of_run
from kit.hub.log import log_run_model, log_train_model, model_name, newest_model_uri, register

__all__ = [
    "load_model_folder",
    "load_segmenter",
    "log_run_model",
    "log_train_model",
    "model_name",
    "model_of_experiment",
    "model_of_run",
    "newest_model_uri",
    "register",
]
