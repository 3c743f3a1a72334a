"""The trainer: one rank of a FineTuneJob (`kubetune train`), DeepSpeed on GPUs or CPUs.

Modules, in the order a run uses them:

    main.py         the shell: manifest -> run -> one exit code (ExitReason) and rank 0's result.json
    config.py       the manifest and where files live (pvc:// mounts, paths relative to the manifest)
    distributed.py  rank/world from the launcher's environment; gloo on CPU, NCCL on GPUs; all-reduces
    preflight.py    before anything slow: device, precision, model and data readable, disk for checkpoints
    ownership.py    the checkpoint folder's owner.json: a different run's folder refused, the same YAML adopted
    fencing.py      the attempt's epoch.json in the checkpoint folder: a superseded attempt's ranks write nothing
    errors.py       exception classes per exit reason and `classify`, the one place exceptions map to codes
    data.py         reading (datasets) and checking records; tokenizing text / prompt-completion / chat
                    with the loss mask (-100 outside completions and assistant turns)
    dataset.py      the data pipeline: read, split, tokenize, pack, report
    report.py       the data report (counts, lengths, duplicates, leakage; each dropped / truncated line)
    packing.py      the seeded data order per (epoch, step, rank); packing and padding into tensors
    model.py        loading (local, hf://, GGUF), dropout override, LoRA, atomic export
    gguf_cache.py   a GGUF file converted once per job by rank 0, loaded by every rank and attempt
    zero3.py        ZeRO-3: loading straight into shards; export one parameter at a time, LoRA merged on CPU
    engine.py       the DeepSpeed config, AdamW and the transformers LR schedule
    loop.py         the training loop: steps, logging, evaluation, early stopping, checkpoints, the end
    evaluation.py   loss / perplexity / token accuracy / batched greedy exact match (reusable API); the
                    training loss with logits at the answer positions only
    checkpoint.py   atomic checkpoints with a sidecar state; pruning that a skipped checkpoint cannot upset
    integrity.py    each checkpoint's manifest (every file's size and SHA-256), written last, and its check
    resume.py       the checkpoint to continue from: verified first, damage skipped and named, I/O retried
    metrics.py      every Prometheus metric and the /metrics + /progress + /result HTTP endpoint
    handover.py     the whole result waiting at GET /result for the operator (the termination message is capped)
    outputs.py      rank 0's progress.json, metrics.jsonl, result.json and termination message
    local_results.py every local rank's result; the pod's termination message carries the most telling one
    state.py        the stop request (SIGTERM) and RunState, what a checkpoint's sidecar holds
    baselines.py    zero-shot / few-shot prompting baselines beside the fine-tuned model, and the verdict
    retrieval.py    the most similar training examples for few-shot prompts (embeddings, cosine top-k)
    diagnostics.py  the loss history the fit policy (over- / under-fitting) reads, kept in checkpoints
    hang_watch.py   each rank's beat to the gang's store; ranks 0 and 1 judge them (kubetune.policies.hang)
    timeline.py     where the start-up went, logged and recorded at each attempt's first step

The decisions that are not about tensors live in kubetune.policies (early stopping).
"""
