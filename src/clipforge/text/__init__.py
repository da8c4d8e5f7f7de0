"""Text side of CLIP: the BPE tokenizer with OpenAI's ids (CLIP, Radford et al. 2021; OpenAI's simple_tokenizer).

`CLIPTokenizer(context_length=77)` turns captions into the (N, context_length) id tensor the text tower
takes; `tokenize(texts)` does the same on a shared instance. See `tokenizer.py` for the routing between
the Rust fast path and the exact pure-Python path.
"""

from .tokenizer import DEFAULT_CONTEXT_LENGTH, CLIPTokenizer, tokenize

__all__ = ["DEFAULT_CONTEXT_LENGTH", "CLIPTokenizer", "tokenize"]
