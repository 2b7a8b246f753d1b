"""What one launch inside a Slurm allocation gives each rank (run by slurm_probe.sbatch).

Every process writes one line `PROBE {json}`: its COMM_WORLD rank and size,
the allocation's task count the batch script saw (LLCUDA_EXPECT_RANKS), the
launcher's local-rank variables, CUDA_VISIBLE_DEVICES and the device
`resolve_device("cuda", ...)` picks for it. Without real GPUs the number of
visible GPUs is the length of CUDA_VISIBLE_DEVICES (Slurm's fake gres in CI),
or 4 when it is unset. The test in test_slurm.py judges the lines.
"""

import json
import os
import sys

from llcuda_mpi import mpi


def main() -> int:
    ctx = mpi.init(abort_on_exception=True)
    visible = mpi.visible_devices(os.environ)
    n_visible = 4 if visible is None else len(visible)
    try:
        device = mpi.resolve_device("cuda", os.environ, is_master=ctx.is_master,
                                    local_worker_index=ctx.local_worker_index, n_visible=n_visible,
                                    master_on_node=ctx.master_on_node, host=ctx.host)
        device = {"device": str(device), "physical": device.physical}
    except mpi.DeviceError as exc:
        device = {"device": "error", "error": str(exc)}
    names = (*mpi.LOCAL_RANK_VARS, "SLURM_PROCID", "SLURM_NTASKS", "CUDA_VISIBLE_DEVICES", "LLCUDA_EXPECT_RANKS")
    line = {"rank": ctx.rank, "size": ctx.size, "node_rank": ctx.node_rank,
            "mismatch": mpi.launch_mismatch_message(ctx.size, os.environ),
            "env": {k: os.environ[k] for k in names if k in os.environ}, **device}
    sys.stdout.write("PROBE " + json.dumps(line, sort_keys=True) + "\n")   # one write: lines do not mix
    sys.stdout.flush()
    ctx.world.Barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
