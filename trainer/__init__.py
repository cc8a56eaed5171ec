"""trainer: supervised fine-tuning on a curated run directory's packed shards.

`trainer.fit.train(run_dir, cfg)` (or `python -m trainer RUN_DIR [--config CFG] [--resume]`, also
under torchrun) reads manifest.json, shards/ and tokenizer/, and writes model/ (a Hugging Face
directory), train/metrics.jsonl, train/eval.json, train/summary.json, train/checkpoints/ and, with
`train.save_initial_model`, train/model_init/.

- Loss: cross-entropy on the tokens whose loss_mask is 1; the label shift happens once, in
  `trainer.loss.TargetLoss`; a step's loss is normalised by the target tokens of the whole step
  (all micro-batches, all ranks).
- Packing: position_ids restart at each segment and no token attends to another conversation. By
  default a micro-batch's rows are concatenated into one sequence and attention runs segment by
  segment (`sftforge_varlen`, `trainer.attention`; flash-attn's varlen kernels on CUDA when installed);
  `train.attn_implementation = "sdpa"` or `"eager"` pads the rows and uses a block-diagonal causal mask.
- Checkpoints (`trainer.checkpoint`) are data only, safetensors and JSON: loading one never unpickles.
- Defaults (`schemas/config_train.py`): a 2-layer, 128-wide Llama built from scratch, 3 epochs,
  2 packed rows per step, AdamW 2e-3 with warm-up and cosine decay: the demo (about 20 rows of
  2048 tokens) takes ~30 steps, a minute or two on a CPU. Set `model.path` to a local HF model directory to fine-tune a real model.
  With `model.path`, the [train] keys the config leaves unset get fine-tuning defaults (`trainer.defaults`).
- LoRA (`[lora]`, `trainer.lora` through peft; QLoRA on CUDA): only adapters train; model/adapter/ and
  the merged model/. `trainer.prepare` builds the model (bf16 frozen base, activation checkpointing);
  `trainer.fsdp` shards it with FSDP2 under torchrun (`train.parallel = "fsdp"`).
"""
