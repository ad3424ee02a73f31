"""Train: the two training commands and what they share.

Owns run options, trainer arguments, checkpoints and progress shared by both commands
(:mod:`.common`), FSDP sharding, saves and resume (:mod:`.fsdp`), the ownership of a run folder: its lock, its resume record and clean-up
(:mod:`.run_folder`), the record of a run's evaluation data (:mod:`.eval_record`), the embedding
trainer (:mod:`.embed`) and its losses (:mod:`.losses`), the reranker's data shapes
(:mod:`.rerank_data`), offline defaults (:mod:`.rerank_demo`) and trainer (:mod:`.rerank`),
and the ``--dry-run`` memory planner (:mod:`.memory_plan`) with its per-GPU plan for many GPUs
(:mod:`.gpu_plan`). Sentence Transformers' trainers and
losses do the training.

May import: every other wing and the ground.
"""
