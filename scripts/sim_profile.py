"""One training step's profile from two DYNACT_CUDA_SIM_PROFILE files of scripts/gpu-sim.sh
--profile: a run of one step and a run of two, identical otherwise. Prints one JSON object per
kernel (or GEMM shape), the second run's counts minus the first's, most warp instructions
first, then a totals object.

    python3 scripts/sim_profile.py ONE_STEP.jsonl TWO_STEPS.jsonl
"""
import json
import sys
from collections import defaultdict

COUNTERS = ["warp_instructions", "thread_instructions", "sectors_read", "sectors_written",
            "global_loads", "global_stores", "shared_accesses", "atomics"]


def summarize(path):
    kernels = defaultdict(lambda: defaultdict(int))
    shapes = {}
    for line in open(path):
        r = json.loads(line)
        name = r["kernel"]
        if name.startswith("cublas"):
            shape = (r["m"], r["n"], r["k"], r["batch"], r["ab_dtype"], r["c_dtype"], r["transa"], r["transb"])
            key = f"{name} m={shape[0]} n={shape[1]} k={shape[2]} batch={shape[3]} {shape[4]}->{shape[5]}"
            shapes[key] = {"m": shape[0], "n": shape[1], "k": shape[2], "batch": shape[3],
                           "ab_dtype": shape[4], "c_dtype": shape[5]}
            kernels[key]["launches"] += 1
            kernels[key]["flops"] += r["flops"]
        elif name.startswith("memcpy") or name.startswith("nccl"):
            kernels[name]["calls"] += 1
            kernels[name]["bytes"] += r["bytes"]
        elif name == "stream_synchronize":
            kernels[name]["calls"] += 1
        else:
            key = f"{name} grid={r['grid']} block={r['block']}"
            shapes[key] = {"kernel": name, "grid": r["grid"], "block": r["block"]}
            k = kernels[key]
            k["launches"] += 1
            for c in COUNTERS:
                k[c] += r[c]
    return kernels, shapes


one, shapes_one = summarize(sys.argv[1])
two, shapes_two = summarize(sys.argv[2])
shapes = {**shapes_one, **shapes_two}
step = {}
for key in set(one) | set(two):
    diff = {c: two[key][c] - one[key][c] for c in set(one[key]) | set(two[key])}
    if any(diff.values()):
        step[key] = diff
totals = defaultdict(int)
rows = []
for key, d in step.items():
    if key.startswith("memcpy") or key.startswith("nccl") or key == "stream_synchronize":
        totals[key.split(" ")[0] + "_calls"] += d.get("calls", 0)
        totals[key.split(" ")[0] + "_bytes"] += d.get("bytes", 0)
        continue
    totals["launches"] += d.get("launches", 0)
    for c in COUNTERS + ["flops"]:
        totals[c] += d.get(c, 0)
    rows.append({"name": key.split(" ")[0], **shapes.get(key, {}), **d})
rows.sort(key=lambda r: (-r.get("warp_instructions", 0), -r.get("flops", 0)))
for r in rows:
    print(json.dumps(r))
totals = dict(totals)
# A copy to the host waits for the stream as a synchronisation does.
totals["host_syncs"] = totals.pop("stream_synchronize_calls", 0) + totals.get("memcpy_device_to_host_calls", 0)
totals.pop("stream_synchronize_bytes", None)
print(json.dumps({"totals": totals}))
