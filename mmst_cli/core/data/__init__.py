"""Data: tables and their columns, and the media references inside them.

Owns reading jsonl / csv / parquet / ``save_to_disk`` / Hub datasets into ``datasets`` tables
(:mod:`.tables`), classifying and checking media references and confining them to the data
folder (:mod:`.media`), videos given as frame lists (:mod:`.frames`), PDF pages as images and
text (:mod:`.documents`), and opt-in remote media (:mod:`.remote_media`). Hugging Face
``datasets`` does the reading.

May import: the ground (``mmst_cli.core.errors``, ``mmst_cli.core.progress``) only.
"""
