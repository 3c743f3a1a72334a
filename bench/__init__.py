"""kubetune's benchmarks: `make bench` (= `python -m bench`) measures, `docs/benchmarks.md` holds the results.

Why a package of its own: the numbers the README quotes must come from code anyone can re-run, and the
GPU script (`bench/gpu.sh`) must measure the same way as the CPU run, so both share these modules.

- `workload`: the model sizes, datasets and manifests both trainers train on (built offline);
- `hf_side`: one rank of the baseline, transformers' `Trainer` with the same DeepSpeed config;
- `trainers`: runs kubetune and the baseline alternately and reduces their logs to the same figures;
- `overheads`: observability costs (metrics, progress, checkpoints) as shares of step and wall time;
- `operator_scale`: the operator against the emulated API server with 100 to 1,000 live jobs;
- `machine`, `stats`, `report`: machine facts, medians and percentiles, the Markdown and README table;
- `gpu`: the GPU comparison (`bench/gpu.sh`), with peak memory and MFU (formula in `flops`).
"""
