"""Throughput of the bundle's evaluation on N ranks:
`torchrun --nproc_per_node=N docs/benchmarks/stream.py DATA KEY OUT [REPEAT]`.

Runs the datalist split KEY of DATA repeated REPEAT times (default 4) as one stream, times
`evaluator.run()` alone (between barriers, after start-up) and prints volumes/s on rank 0.
"""

import json
import sys
import time
from pathlib import Path

import torch.distributed as dist
from monai.bundle import ConfigWorkflow

bundle = Path(__file__).resolve().parents[2] / "bundle"
configs = bundle / "configs"
data, key, out = sys.argv[1:4]
repeat = int(sys.argv[4]) if len(sys.argv) > 4 else 4
files = [str(configs / f) for f in ("inference.json", "evaluate.json", "multi_gpu_evaluate.json")]
stream = (
    "$monai.data.load_decathlon_datalist(@datalist_file, data_list_key=@data_list_key, base_dir=@dataset_dir)"
    f" * {repeat}"
)
wf = ConfigWorkflow(
    files,
    workflow_type="infer",
    bundle_root=str(bundle),
    dataset_dir=data,
    data_list_key=key,
    output_dir=out,
    datalist=stream,
    run_id="run",
)
wf.initialize()
n = len(wf.parser.get_parsed_content("datalist"))
dist.barrier()
start = time.perf_counter()
wf.run()
dist.barrier()
seconds = time.perf_counter() - start
if dist.get_rank() == 0:
    metrics = (Path(out) / "metrics.csv").read_text().strip()
    result = {
        "ranks": dist.get_world_size(),
        "volumes": n,
        "seconds": seconds,
        "volumes_per_s": n / seconds,
        "metrics": metrics,
    }
    print("RESULT", json.dumps(result))
wf.finalize()
