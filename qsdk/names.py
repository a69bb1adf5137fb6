"""The names qsdk writes into other systems: MLflow tags and Delta commit metadata.

One module, so a reader of an MLflow run or a Delta log can find what each key means, and no two
modules spell one key differently. Changing a value breaks reading runs and tables written before.
"""

from __future__ import annotations

# shared by MLflow tags and Delta commit metadata
RUN_ID = "qsdk.run_id"  # the qsdk run (runs/<run_id>/)
STAGE = "qsdk.stage"
FLOW = "qsdk.flow"
PARTITION = "qsdk.partition"
TASK = "qsdk.task"
LAKEHOUSE = "qsdk.lakehouse"  # the lakehouse root a run wrote to

# folders qsdk keeps inside a lakehouse root, beside the tables (the direct-write guard skips them)
LOCK_DIR = "_qsdk_locks"  # lock files of older versions (creation takes none now); still skipped
SANDBOX_DIR = "_sandbox"  # interactive sessions' writes (%qsdk stage), one folder per user

# MLflow tags and params
KIND = "qsdk.kind"  # "flow", "stage" or "partition"
STATUS = "qsdk.status"
PARAMS = "qsdk.params"
STAGES = "qsdk.stages"

# Delta commit metadata
WRITE_ID = "qsdk.write_id"
APP_ID = "qsdk.app_id"
OPERATION = "qsdk.operation"
ROLLBACK = "qsdk.rollback"
COMPENSATES = "qsdk.compensates"  # the version a rollback commit undoes
REASON = "qsdk.reason"  # why a rollback commit was made
INPUTS = "qsdk.inputs"  # the table versions a stage read (lineage)
