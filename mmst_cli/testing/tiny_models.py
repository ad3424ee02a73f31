"""Build tiny random-weight models of real transformers architectures, fully offline.

Each ``build_tiny_*`` function writes a bare transformers checkpoint (``config.json``,
``model.safetensors`` and the tokenizer/processor files) into ``path`` and returns ``path``
as a :class:`pathlib.Path`. ``sentence_transformers.SentenceTransformer(path)`` loads every one
of them, so tests and benchmarks can exercise the real model code paths without the Hugging
Face Hub. Weights are random (seeded with ``torch.manual_seed``); the tokenizers are
``tokenizers``-library models (WordPiece, BPE, Unigram) whose small vocabularies are learnt on a
built-in corpus by a deterministic merge learner, so every build is byte-for-byte identical and
each checkpoint stays well under 1 MB. Nothing here touches the network.

Typical use (e.g. in a session-scoped pytest fixture)::

    from mmst_cli.testing.tiny_models import TINY_MODEL_BUILDERS

    path = TINY_MODEL_BUILDERS["clip"](tmp_path_factory.mktemp("clip"))
    model = SentenceTransformer(str(path))
"""

from __future__ import annotations

import json
import math
import pathlib
import string
from collections import Counter
from collections.abc import Callable
from os import PathLike

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

__all__ = [
    "TINY_MODEL_BUILDERS",
    "build_tiny_bert",
    "build_tiny_clip",
    "build_tiny_qwen2_vl",
    "build_tiny_siglip",
    "build_tiny_wav2vec2",
]

SEED = 0

# Small corpus used to train the tokenizers. The vocabularies only need to be plausible, not good.
CORPUS: tuple[str, ...] = (
    "A photo of a cat sitting on a red sofa.",
    "A dog runs across the green park in the morning.",
    "Two people are riding bicycles along the river.",
    "The quick brown fox jumps over the lazy dog.",
    "A bowl of fresh fruit on a wooden kitchen table.",
    "An old church with a tall tower under a blue sky.",
    "Children play football on a sunny afternoon.",
    "A red car is parked next to a yellow house.",
    "The chart shows revenue growth between 2019 and 2024.",
    "Scanned invoice with a table of items, prices and a total.",
    "What is the capital city of France?",
    "Paris is the capital and largest city of France.",
    "How many legs does a spider have?",
    "A spider has eight legs and two body parts.",
    "Machine learning models map images and text into one vector space.",
    "Search for documents that answer the question.",
    "Given a query, retrieve relevant passages or images.",
    "The weather today is cold, windy and rainy.",
    "She plays the piano and sings in a small band.",
    "A drum beat with a crash cymbal and a bass line.",
    "Speech recognition turns spoken words into written text.",
    "A short video of waves breaking on a sandy beach.",
    "Judge whether the document meets the requirements of the query.",
    "Answer yes or no. The answer is yes. The answer is no.",
    "Score: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
    "Represent the user's input for retrieval.",
    "You are a helpful assistant.",
    "An emoji of a smiling face with heart eyes.",
    "A mountain lake reflects the snowy peaks at sunset.",
    "Birds fly south for the winter, over fields and forests.",
)


def _prepare(path: str | PathLike[str]) -> pathlib.Path:
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    return out


def _save_model(model: torch.nn.Module, out: pathlib.Path) -> None:
    model.eval()
    model.save_pretrained(out, safe_serialization=True)


# Tokenizer training. The trainers of the `tokenizers` library break frequency ties in hash-map
# order, which changes from process to process (same corpus, different vocabularies). So the
# corpus is normalised and pre-tokenised with the `tokenizers` pipeline of the real tokenizer
# class, and the subword merges are learnt here, deterministically.


def _corpus_words(backend: Tokenizer) -> Counter[str]:
    """Count the corpus' pre-tokenised words, using ``backend``'s own normaliser and pre-tokeniser."""
    words: Counter[str] = Counter()
    for line in CORPUS:
        text = backend.normalizer.normalize_str(line) if backend.normalizer is not None else line
        words.update(piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text))
    return words


def _learn_merges(
    words: dict[tuple[str, ...], int], max_merges: int, continuing_prefix: str = ""
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Learn BPE merges on words given as symbol tuples (most frequent pair first, ties broken by
    the pair itself, so the result is deterministic). Merging ``a`` with ``b`` gives
    ``a + b.removeprefix(continuing_prefix)`` (``"ph" + "##oto"`` -> ``"photo"`` for WordPiece).

    Returns the merges in order and the frequency of each merged token when it was created.
    """
    merges: list[tuple[str, str]] = []
    frequencies: dict[str, int] = {}
    for _ in range(max_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < 2:
            break
        first, second = best
        merged = first + second.removeprefix(continuing_prefix)
        merges.append(best)
        frequencies.setdefault(merged, pairs[best])
        new_words: dict[tuple[str, ...], int] = {}
        for symbols, count in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + count
        words = new_words
    return merges, frequencies


def _train_byte_level_bpe(
    backend: Tokenizer, max_merges: int, end_of_word_suffix: str = ""
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocab (all 256 byte symbols, plus ``symbol + suffix`` when words end with a
    suffix, then the merged tokens) and its merges, as tuples (BPE needs tuples for tokens with spaces)."""
    words = {}
    for word, count in _corpus_words(backend).items():
        symbols = list(word)
        symbols[-1] += end_of_word_suffix
        words[tuple(symbols)] = count
    merges, _ = _learn_merges(words, max_merges)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + ([c + end_of_word_suffix for c in alphabet] if end_of_word_suffix else [])
    tokens += [a + b for a, b in merges]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


# --------------------------------------------------------------------------------------------
# BERT (text)
# --------------------------------------------------------------------------------------------


def build_tiny_bert(path: str | PathLike[str]) -> pathlib.Path:
    """Build a tiny ``BertModel`` (hidden 32, 2 layers, 2 heads) with a WordPiece ``BertTokenizer``.

    The WordPiece vocab (277 entries, capped at 400) is learnt on the built-in corpus after BERT's own
    normalisation (lowercase, accents stripped) and pre-tokenisation; every ASCII letter, digit and
    punctuation mark is in it, so ASCII text never becomes ``[UNK]``.
    ``SentenceTransformer(path)`` loads it as Transformer + mean Pooling; modalities: ``["text"]``.
    """
    from transformers import BertConfig, BertModel, BertTokenizer

    out = _prepare(path)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    counts = _corpus_words(BertTokenizer().backend_tokenizer)
    chars = sorted(set("".join(counts)) | set(string.ascii_lowercase + string.digits + string.punctuation))
    words = {(w[0], *("##" + c for c in w[1:])): n for w, n in counts.items()}
    merges, _ = _learn_merges(words, max_merges=400 - len(specials) - 2 * len(chars), continuing_prefix="##")
    tokens = specials + chars + ["##" + c for c in chars] + [a + b.removeprefix("##") for a, b in merges]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}

    tokenizer = BertTokenizer(vocab=vocab, model_max_length=128)
    tokenizer.save_pretrained(out)

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        type_vocab_size=2,
        pad_token_id=vocab["[PAD]"],
    )
    _save_model(BertModel(config, add_pooling_layer=True), out)
    return out


# --------------------------------------------------------------------------------------------
# CLIP (text + image)
# --------------------------------------------------------------------------------------------


def build_tiny_clip(path: str | PathLike[str]) -> pathlib.Path:
    """Build a tiny ``CLIPModel`` (text/vision hidden 32, 2 layers, 32 px images, patch 8, projection 16).

    Saves a ``CLIPProcessor``: a ``CLIPTokenizer`` over a byte-level BPE learnt with CLIP's own
    pre-tokenisation and the ``</w>`` end-of-word suffix (every byte exists as ``b`` and ``b</w>``,
    as in the real vocab, so nothing is unknown), and a ``CLIPImageProcessor`` at 32 px.
    ``SentenceTransformer(path)`` embeds via ``get_text_features``/``get_image_features`` (no
    Pooling); modalities: ``["text", "image"]``.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out = _prepare(path)
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab, merges = _train_byte_level_bpe(
        CLIPTokenizer().backend_tokenizer, max_merges=300, end_of_word_suffix="</w>"
    )
    for token in (bos, eos):  # last, as in the real CLIP vocab
        vocab.setdefault(token, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)

    shared = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **shared,
        ),
        vision_config=dict(image_size=32, patch_size=8, num_channels=3, **shared),
        projection_dim=16,
    )
    _save_model(CLIPModel(config), out)
    return out


# --------------------------------------------------------------------------------------------
# SigLIP (text + image)
# --------------------------------------------------------------------------------------------


def build_tiny_siglip(path: str | PathLike[str]) -> pathlib.Path:
    """Build a tiny ``SiglipModel`` (text/vision hidden 32, 2 layers, 32 px images, patch 8).

    ``SiglipTokenizer`` needs ``sentencepiece``, so the ``SiglipProcessor`` holds a generic fast
    tokenizer (``PreTrainedTokenizerFast``) over a ``tokenizers`` Unigram model shaped like the real
    one: lowercased, Metaspace (``▁``) pre-tokenisation, ``</s>`` appended and used for padding;
    pieces are the corpus' characters, ASCII letters/digits and subwords learnt on the corpus, scored
    by log frequency. Plus a ``SiglipImageProcessor`` at 32 px. Modalities: ``["text", "image"]``.
    """
    from transformers import (
        PreTrainedTokenizerFast,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
    )

    out = _prepare(path)
    pad, eos, unk = "<pad>", "</s>", "<unk>"  # real SigLIP ids: <pad>=0, </s>=1, <unk>=2
    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")

    counts = _corpus_words(backend)
    char_counts = Counter({c: 1 for c in "\u2581" + string.ascii_lowercase + string.digits})
    for word, n in counts.items():
        char_counts.update({c: n * k for c, k in Counter(word).items()})
    merges, merged_counts = _learn_merges({tuple(w): n for w, n in counts.items()}, max_merges=250)
    total = sum(char_counts.values())
    pieces = [(pad, 0.0), (eos, 0.0), (unk, 0.0)]
    pieces += [(c, math.log(n / total)) for c, n in sorted(char_counts.items())]
    pieces += [(token, math.log(n / total)) for token, n in merged_counts.items()]

    backend.model = models.Unigram(pieces, unk_id=2, byte_fallback=False)
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos, pad_token=eos, unk_token=unk, model_max_length=64
    )
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)

    shared = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    config = SiglipConfig(
        text_config=dict(
            vocab_size=len(pieces),
            max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            **shared,
        ),
        vision_config=dict(image_size=32, patch_size=8, num_channels=3, **shared),
    )
    _save_model(SiglipModel(config), out)
    return out


# --------------------------------------------------------------------------------------------
# Qwen2-VL (text + image + video + chat messages)
# --------------------------------------------------------------------------------------------

QWEN2_VL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# ChatML, as in Qwen2-VL, but with any role name (so reranker roles like "query"/"document" work)
# and no injected default system prompt. Content is a string or a list of items; an item is an
# image ({"type": "image", ...} or any item with an "image"/"image_url" key), a video
# ({"type": "video", ...} or a "video" key) or text ({"type": "text", "text": ...}).
QWEN2_VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in item -%}"
    "{{- item['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


def build_tiny_qwen2_vl(path: str | PathLike[str]) -> pathlib.Path:
    """Build a tiny ``Qwen2VLForConditionalGeneration`` with its full ``Qwen2VLProcessor``.

    Text decoder: hidden 32, 2 layers, 2 heads (head_dim 16, so ``mrope_section=[2, 3, 3]`` sums to
    head_dim / 2 as M-RoPE requires). Vision tower: depth 2, embed dim 32, patch 14, spatial merge 2.
    Processor: byte-level BPE ``Qwen2Tokenizer`` with the Qwen vision/ChatML special tokens,
    ``Qwen2VLImageProcessor`` and ``Qwen2VLVideoProcessor`` limited to 28*28..56*56 pixels (1-4 visual
    tokens per image), and a ChatML chat template accepting image and video content items.
    Modalities: ``["text", "image", "video", "message"]``. Usable as a last-token embedder
    (feature-extraction) and, with ``transformer_task="any-to-any"``, as a logit-score reranker.
    """
    from transformers import (
        Qwen2Tokenizer,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out = _prepare(path)
    vocab, merges = _train_byte_level_bpe(Qwen2Tokenizer().backend_tokenizer, max_merges=350)
    for token in QWEN2_VL_SPECIAL_TOKENS:  # after the BPE vocab, as in the real Qwen vocab
        vocab.setdefault(token, len(vocab))

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in QWEN2_VL_SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=4096,
    )
    pixels = dict(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, temporal_patch_size=2, merge_size=2)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        # cap_pixels_per_frame=True: the reference (qwen-vl-utils) behaviour; leaving it unset warns.
        video_processor=Qwen2VLVideoProcessor(**pixels, cap_pixels_per_frame=True),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)

    token_id = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=token_id("<|endoftext|>"),
            eos_token_id=token_id("<|im_end|>"),
            pad_token_id=token_id("<|endoftext|>"),
        ),
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=32,  # output width of the patch merger == text hidden size
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    _save_model(Qwen2VLForConditionalGeneration(config), out)
    return out


# --------------------------------------------------------------------------------------------
# wav2vec2 (audio)
# --------------------------------------------------------------------------------------------


def build_tiny_wav2vec2(path: str | PathLike[str]) -> pathlib.Path:
    """Build a tiny ``Wav2Vec2Model`` (hidden 32, 2 layers, 3 conv layers, 320x downsampling) for 16 kHz audio.

    Saves a ``Wav2Vec2Processor``: a ``Wav2Vec2FeatureExtractor`` (16 kHz, normalised, with attention
    mask) and a character ``Wav2Vec2CTCTokenizer`` (``AutoProcessor`` needs both). Sentence
    Transformers loads only the encoder, so modalities are audio only (``["audio", ("audio", "text")]``
    in sentence-transformers 6.2, where the tuple entry comes from its built-in audio config).
    """
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Model
    from transformers import Wav2Vec2Processor

    out = _prepare(path)
    chars = ["<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz'"]
    vocab_file = out / "vocab.json"
    vocab_file.write_text(json.dumps({c: i for i, c in enumerate(chars)}), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file), word_delimiter_token="|", do_lower_case=True)
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out)

    config = Wav2Vec2Config(
        vocab_size=len(chars),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 8, 8),
        conv_kernel=(10, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        mask_time_prob=0.0,  # no SpecAugment: keeps training on very short clips valid and deterministic
        pad_token_id=0,
    )
    _save_model(Wav2Vec2Model(config), out)
    return out


TINY_MODEL_BUILDERS: dict[str, Callable[[str | PathLike[str]], pathlib.Path]] = {
    "bert": build_tiny_bert,
    "clip": build_tiny_clip,
    "siglip": build_tiny_siglip,
    "qwen2-vl": build_tiny_qwen2_vl,
    "wav2vec2": build_tiny_wav2vec2,
}
"""Name -> builder; each builder takes an output directory and returns it as a ``pathlib.Path``."""
