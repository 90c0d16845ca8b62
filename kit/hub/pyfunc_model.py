"""The code of every MLflow Model kit logs (MLflow's models-from-code: the model is this file plus its
artifacts, never a pickled object). MLflow runs it when it loads the Model; it needs kit installed."""

from mlflow.models import set_model

from kit.hub.serve import KitPyfuncModel

set_model(KitPyfuncModel())
