"""The stages of the journey, one module each: data → train → predict → evaluate → ensemble → submit →
score (plus style, runs and the demo that chains them).

A stage is a library function that does the work and logs its MLflow run, so `kit demo`, a Python caller
and the CLI record the same runs. Stages find their inputs through `kit.tracking.schema`; they call
building blocks (data, targets, augment, models, training, inference, ensemble, metrics, submission,
style), never the reverse.
"""
