"""Integrations as hooks (Hamilton style): MLflow tracking (:mod:`.mlflow`), DVC versioning and
snapshots (:mod:`.dvc`), console progress (:mod:`.progress`). Each implements the run hooks of
:mod:`qsdk.execution.hooks`; execution never imports them."""
