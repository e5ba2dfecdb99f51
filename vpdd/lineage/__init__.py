"""Lineage: which raw data, code, params and upstream artefacts produced an output directory.

This package is the only place in the library that reads DVC's files; it reads them as plain YAML/JSON and
runs ``git``, and never imports ``dvc`` or ``prefect``. By concern:

- :mod:`~vpdd.lineage.dvcfiles`: the one reader of ``data.dvc``, ``dvc.lock``, ``dvc.yaml`` and the DVC cache;
- :mod:`~vpdd.lineage.record`: the record of an output (``build_lineage``; the fields are listed there), the
  params digest, and the check of a record against the current dvc.lock / data.dvc;
- :mod:`~vpdd.lineage.storage`: the record's two copies, ``lineage.json`` and the ``model.safetensors``
  metadata, read, written and compared;
- :mod:`~vpdd.lineage.history`: the outputs made from a data version across git revisions and DVC experiments;
- :mod:`~vpdd.lineage.render`: text and markdown for ``vpdd lineage`` and the flows' artifacts.

Training code attaches a record to a checkpoint with::

    record = build_lineage(out_dir)                  # inside the DVC stage that writes out_dir
    save_vpdd_checkpoint(out_dir, ..., lineage=record)  # lineage.json + lineage_metadata(record) in the weights
"""

from vpdd.lineage.dvcfiles import (
    StageInfo,
    data_md5,
    data_version,
    find_repo_root,
    lock_outputs,
    lock_stage_for,
    lookup,
    pipeline_stages,
    read_dvc_lock,
    upstream_stages,
)
from vpdd.lineage.history import find_outputs_for_data
from vpdd.lineage.record import (
    UPSTREAM_OUTPUTS,
    build_lineage,
    check_against_lock,
    flow_run_id,
    index_digest,
    params_digest,
    robot_data_source,
)
from vpdd.lineage.render import lineage_text, outputs_markdown
from vpdd.lineage.storage import (
    LINEAGE_FILE,
    WEIGHTS_FILE,
    compare_records,
    lineage_from_metadata,
    lineage_metadata,
    lineage_sources,
    read_lineage,
    safetensors_metadata,
)

# what callers use through the package; the rest is imported from the modules themselves
__all__ = [
    "LINEAGE_FILE", "UPSTREAM_OUTPUTS", "WEIGHTS_FILE", "StageInfo", "build_lineage", "check_against_lock",
    "compare_records", "data_md5", "data_version", "find_outputs_for_data", "find_repo_root", "flow_run_id",
    "index_digest", "lineage_from_metadata", "lineage_metadata", "lineage_sources", "lineage_text", "lock_outputs",
    "lock_stage_for", "lookup", "outputs_markdown", "params_digest", "pipeline_stages", "read_dvc_lock",
    "read_lineage", "robot_data_source", "safetensors_metadata", "upstream_stages",
]
