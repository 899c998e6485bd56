"""The CRM's contract (src/mes/crm_contract.py) for the templates: loaded from the repository as a file, the way
the local stack loads it (stack/crm.py), so both render postgresql/crm_schema.sql.j2 from the same tables."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _contract(repo_root: str):
    path = Path(repo_root) / "src" / "mes" / "crm_contract.py"
    spec = importlib.util.spec_from_file_location("mes_crm_contract", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def crm_contract(repo_root: str) -> dict:
    """{tables: [...], publication, slot} of the contract in the repository at `repo_root`."""
    module = _contract(repo_root)
    return {"tables": module.as_dicts(), "publication": module.PUBLICATION, "slot": module.SLOT}


class FilterModule:
    def filters(self):
        return {"crm_contract": crm_contract}
