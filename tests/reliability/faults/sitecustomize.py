"""Fault injection for tests/reliability/test_rollback.py, loaded by every Python process whose
PYTHONPATH holds this folder (the test's Ray workers): with ``QSDK_TEST_FAULT_PLAN`` naming a
JSON plan, ``Lakehouse.write`` orders two partitions' commits and fails one of them.

Plan: ``{"stage", "failing", "other", "first", "second"}``: partition ``other`` commits to table
``first`` only after partition ``failing`` did (in the same run), and ``failing``'s commit to
``second`` waits until ``other`` committed to ``first``, then fails as a full disk would.
"""

import json
import os
import time

_PLAN = os.environ.get("QSDK_TEST_FAULT_PLAN")

if _PLAN:
    from qsdk.errors import LakehouseError
    from qsdk.lakehouse import tables as _tables

    _original = _tables.Lakehouse.write

    def _committed(lake, table, run_id, partition):
        if not lake.exists(table):
            return False
        return any((lake.commit_info(table, v) or {}).get("qsdk.run_id") == run_id
                   and (lake.commit_info(table, v) or {}).get("qsdk.partition") == partition
                   for v in range(lake.version(table) + 1))

    def _wait(lake, table, run_id, partition):
        deadline = time.monotonic() + 90
        while not _committed(lake, table, run_id, partition):
            if time.monotonic() > deadline:
                raise LakehouseError(f"fault plan: {partition} never committed to {table}")
            time.sleep(0.05)

    def write(self, name, data, *, metadata=None, **kwargs):
        meta = metadata or {}
        plan = json.loads(open(_PLAN).read()) if os.path.exists(_PLAN) else None
        if plan and meta.get("qsdk.stage") == plan["stage"] and not meta.get("qsdk.rollback"):
            run, part = meta.get("qsdk.run_id"), meta.get("qsdk.partition")
            if part == plan["other"] and name == plan["first"]:
                _wait(self, plan["first"], run, plan["failing"])
            if part == plan["failing"] and name == plan["second"]:
                _wait(self, plan["first"], run, plan["other"])
                raise LakehouseError(f"failed writing {name!r}: injected fault: No space left on device")
        return _original(self, name, data, metadata=metadata, **kwargs)

    _tables.Lakehouse.write = write
