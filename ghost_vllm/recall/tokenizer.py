"""The recall model's tokenizer: one word per token id (``t0`` … ``t511``, whitespace-separated), so that vLLM and
transformers can load the model like any other; MQAR works on ids directly."""

from __future__ import annotations

__all__ = ["recall_tokenizer"]


def recall_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t0", bos_token="t0", pad_token="t0",
                                   unk_token="t0")
