"""Running a flow: scheduling (plan and run a flow's tasks in DAG order), one task (the papermill
call and its commit), qsdk's papermill engine, the pre-warmed kernel pool, the executors (local,
Ray) and the stage context a kernel receives. Imports the model and the lakehouse, never the
integrations or the front-ends (checked by import-linter, see pyproject.toml)."""
