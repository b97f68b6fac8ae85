"""A tiny BERT built locally from a corpus: WordPiece tokenizer + small BertConfig, random weights.

For smoke runs, tests and CI where the Hugging Face hub cannot be reached. It goes through exactly the
same code path as AraBERT (AutoTokenizer / AutoModelForSequenceClassification from a directory), but
it knows nothing about Arabic beyond the corpus it was built on: never use it to judge quality.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def corpus_vocab(texts: Iterable[str], vocab_size: int, normalizer, pre_tokenizer) -> dict[str, int]:
    """A deterministic WordPiece vocabulary: special tokens, every character (word-initial and ##-continuation),
    then the most frequent whole words (ties in alphabetical order) up to `vocab_size`."""
    from collections import Counter

    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(str(text))))
    chars = sorted({c for w in words for c in w})
    tokens = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    seen = set(tokens)
    for word, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(tokens) >= vocab_size:
            break
        if word not in seen:
            tokens.append(word)
            seen.add(word)
    return {token: i for i, token in enumerate(tokens)}


def build_tiny_bert(
    texts: Iterable[str],
    out_dir: Path | str,
    labels: Sequence[str],
    *,
    vocab_size: int = 3000,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 128,
    max_position: int = 512,
    seed: int = 0,
) -> Path:
    """Write a loadable model directory (config, weights, tokenizer) to `out_dir` and return it."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    normalizer = normalizers.NFC()
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The vocabulary is counted here rather than by tokenizers' WordPieceTrainer, whose tie-breaking is
    # not reproducible (vocabularies of different sizes from the same texts), which broke seed control.
    tok = Tokenizer(models.WordPiece(vocab=corpus_vocab(texts, vocab_size, normalizer, pre_tokenizer), unk_token="[UNK]"))
    # No lower-casing or accent stripping: either would strip hamza and shadda from Arabic.
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = BertTokenizerFast(
        tokenizer_object=tok,
        do_lower_case=False,
        strip_accents=False,
        tokenize_chinese_chars=True,
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        model_max_length=max_position,
    )
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    BertForSequenceClassification(config).save_pretrained(out)
    log.info("built tiny BERT (%d tokens, %d layers, hidden %d) in %s", config.vocab_size, num_layers, hidden_size, out)
    return out
