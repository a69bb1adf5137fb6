"""The Lakehouse: Delta tables under a declared contract.

``contract`` holds table specs and the strict schema check; ``tables`` owns every Delta read
and write; ``loader`` is what a stage notebook imports (``DataLoader``, ``write_table``).
"""

from qsdk.lakehouse.contract import TableSpec, validate_table_name
from qsdk.lakehouse.tables import Lakehouse

__all__ = ["Lakehouse", "TableSpec", "validate_table_name"]
