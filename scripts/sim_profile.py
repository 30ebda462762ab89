"""One training step's profile from two DYNACT_CUDA_SIM_PROFILE files of scripts/gpu-sim.sh
--profile: a run of one step and a run of two, identical otherwise. Prints one JSON object per
kernel (or GEMM shape), the second run's counts minus the first's, with a rough H200 time
floor (estimate_ms_h200) and the share of its sectors' bytes it used (sector_use), slowest
first; then the kernels short of the GPU-speed targets (moving over 1 MB a step with
sector_use under 0.8, or on fewer blocks than the 132 SMs); then a totals object.

    python3 scripts/sim_profile.py ONE_STEP.jsonl TWO_STEPS.jsonl
"""
import json
import sys
from collections import defaultdict

# A rough H200 model for the estimate (a floor, not a prediction), from what was measured on
# the H200 machines this project is lent (the device tool's KINDS.md): a device-to-device copy
# moved 4.3 TB/s (bytes read plus written; the datasheet says 4.8), and an 8192^3 bf16 product
# ran at 788 TFLOP/s. This step's products are far smaller (k = 384 to 1,536, n = 384 to
# 1,536), which cuBLAS runs well under the large-square rate, so GEMMs count at 60% of it.
# Then 132 SMs issuing up to 4 warp instructions a cycle at 1.98 GHz (the clock read under
# load), a dependent instruction every 4 cycles within one warp, and 2.5 us a launch.
HBM_BYTES_PER_S = 4.3e12
GEMM_FLOPS_PER_S = 0.6 * 788e12
SMS, ISSUE_PER_SM, CLOCK_HZ, DEPENDENT_CYCLES = 132, 4, 1.98e9, 4
LAUNCH_S = 2.5e-6


def launch_floor_s(r):
    """Seconds for one launch: the slowest of its memory traffic (32 bytes a sector: L1
    transactions, which overstate DRAM bytes where L2 merges partial sectors), its issue
    slots on the SMs its blocks can occupy, and its longest warp's dependent chain."""
    if "flops" in r:
        return r["flops"] / GEMM_FLOPS_PER_S + LAUNCH_S
    blocks = r["grid"][0] * r["grid"][1] * r["grid"][2]
    memory = 32 * (r["sectors_read"] + r["sectors_written"]) / HBM_BYTES_PER_S
    issue = r["warp_instructions"] / (min(blocks, SMS) * ISSUE_PER_SM * CLOCK_HZ)
    chain = r.get("longest_warp", 0) * DEPENDENT_CYCLES / CLOCK_HZ
    return max(memory, issue, chain) + LAUNCH_S


COUNTERS = ["warp_instructions", "thread_instructions", "sectors_read", "sectors_written",
            "bytes_read", "bytes_written", "global_loads", "global_stores", "shared_accesses",
            "atomics"]


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
            kernels[key]["estimate_us_h200"] += 1e6 * launch_floor_s(r)
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
                k[c] += r.get(c, 0)
            k["estimate_us_h200"] += 1e6 * launch_floor_s(r)
    return kernels, shapes


def sector_use(r):
    """The share of the bytes of the sectors a kernel touched that its lanes accessed."""
    sectors = r.get("sectors_read", 0) + r.get("sectors_written", 0)
    used = r.get("bytes_read", 0) + r.get("bytes_written", 0)
    return round(used / (32 * sectors), 3) if sectors else 1.0


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
    row = {"name": key.split(" ")[0], **shapes.get(key, {}), **d}
    row["estimate_ms_h200"] = round(row.pop("estimate_us_h200", 0) / 1e3, 3)
    if "sectors_read" in row:
        row["sector_use"] = sector_use(row)
    totals["estimate_ms_h200"] += row["estimate_ms_h200"]
    totals["estimate_ms_h200_gemm" if "flops" in row else "estimate_ms_h200_kernels"] += row["estimate_ms_h200"]
    rows.append(row)
rows.sort(key=lambda r: -r["estimate_ms_h200"])
for r in rows:
    print(json.dumps(r))
short = []
for r in rows:
    moved = 32 * (r.get("sectors_read", 0) + r.get("sectors_written", 0))
    if "flops" in r or moved <= 1e6:
        continue
    blocks = r["grid"][0] * r["grid"][1] * r["grid"][2]
    if r["sector_use"] < 0.8 or blocks < SMS:
        short.append({"name": r["name"], "grid": r["grid"], "launches": r["launches"],
                      "mb_moved": round(moved / 1e6, 1), "sector_use": r["sector_use"]})
print(json.dumps({"short_of_targets": short}))
totals["sector_use"] = sector_use(totals)
totals = {k: round(v, 2) if isinstance(v, float) else v for k, v in totals.items()}
# A copy to the host waits for the stream as a synchronisation does.
totals["host_syncs"] = totals.pop("stream_synchronize_calls", 0) + totals.get("memcpy_device_to_host_calls", 0)
totals.pop("stream_synchronize_bytes", None)
print(json.dumps({"totals": totals}))
