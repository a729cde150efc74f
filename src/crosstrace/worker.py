"""One launched training worker: ``python -m crosstrace.worker SPEC``.

:func:`crosstrace.distributed.launch` writes the job (:class:`crosstrace.train.TrainJob`, as
JSON) to a spec file and starts this module once per process, as torchrun does; each worker
joins the process group and trains its slice of every step. A refusal of its input is
reported to the launcher through a file beside the spec (its message) and the exit code.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch

from crosstrace.distributed import ERROR_FILE
from crosstrace.errors import CrosstraceError
from crosstrace.train import TrainJob, run_job, with_progress


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(name)s %(message)s",
    )
    torch.set_num_threads(int(spec["threads"]))
    try:
        job = TrainJob.from_json(spec["job"])
        run_job(with_progress(job, job.progress and rank == 0))
    except CrosstraceError as exc:
        (Path(spec["error_dir"]) / ERROR_FILE.format(rank=rank)).write_text(str(exc))
        print(f"crosstrace: rank {rank}: {exc}", file=sys.stderr, flush=True)
        return int(getattr(exc, "exit_code", 2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
