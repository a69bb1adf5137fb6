"""``qsdk import-script``: turn a legacy Python script into a stage (notebook + registry entry).

:func:`import_script` reads the script with :mod:`ast` and never runs it. It writes a notebook
under ``notebooks/`` whose ``parameters`` cell comes from the script's argparse or click options
and ``UPPER_CASE`` constants, and a registry entry whose tables come from the files the script
reads and writes:

* a Parquet or CSV file it **writes** at a path the code names (a literal, or an option's default)
  becomes a table ``LAYER.<file stem>``; the write becomes ``qsdk.write_table``. The contract
  (columns and types) is read from that file when it exists (the legacy output), else the
  table is declared without columns for a human to fill in;
* a file it **reads** that a registry table was migrated from (its description names the file)
  becomes ``qsdk.DataLoader().read`` (``read_arrow`` for ``pyarrow.parquet.read_table``); a table
  is never guessed from a file name;
* any other file it reads that exists is an external **source**: the read stays, declared in the
  stage's ``sources:`` (cache key, and ``qsdk check`` accepts it);
* everything else (a path built at run time, ``open(..., "w")``, ``np.save``...) is left in place
  under a ``# qsdk: TODO`` comment and reported, never guessed.

Imports from other scripts are reported as blockers. The front-ends call :func:`import_script`.
"""

from __future__ import annotations

from qsdk.migrate.importer import ImportReport, IOItem, import_script

__all__ = ["IOItem", "ImportReport", "import_script"]
