"""Models: finding, loading, composing and describing them.

Owns locating a reference before any weights load (:mod:`.locate`), loading checkpoints
(:mod:`.checkpoints`) and any model including the embedded default (:mod:`.loading`), composing
Routers and the default (:mod:`.composition`), the timm image module, which has no mmst imports
(:mod:`.timm_image_encoder`), and its weights (:mod:`.timm_encoder`, :mod:`.timm_weights`), saving
models that load without mmst and reloading them without trusting code (:mod:`.portable`), the
trained model's card (:mod:`.model_card`), LoRA (:mod:`.lora`), attention backends
(:mod:`.attention`), ``mmst detect``'s description (:mod:`.description`) and building
rerankers (:mod:`.rerankers`). Sentence Transformers, transformers, timm and peft do the work.

May import: ``data`` and the ground.
"""
