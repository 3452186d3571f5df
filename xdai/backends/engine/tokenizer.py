"""Text <-> tokens through the model's vocabulary, and an incremental detokenizer per sequence.

Reads the vocabulary only, so any thread may call it while the engine's thread decodes.
"""

from __future__ import annotations

import codecs
import ctypes

import llama_cpp


class Tokenizer:
    """The spellings of `llama_cpp.Llama.tokenize/detokenize`, over a loaded model's vocabulary."""

    def __init__(self, model: llama_cpp.llama_model_p) -> None:
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)
        self._pieces: dict[int, bytes] = {}

    def encode(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Prompt text is data by default: special-token spellings inside it (e.g. "<|im_end|>") stay plain text."""
        data = text.encode("utf-8")
        room = len(data) + 8
        buf = (llama_cpp.llama_token * room)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, room, add_bos, special)
        if n < 0:  # more tokens than bytes + 8 cannot happen for BPE, but the API allows it
            room = -n
            buf = (llama_cpp.llama_token * room)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, room, add_bos, special)
        return list(buf[:n])

    def separator(self) -> int:
        """What an empty text is conditioned on: BOS, or EOS for models without one (Qwen)."""
        return self.bos if self.bos >= 0 else self.eos

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def piece(self, token: int) -> bytes:
        """The bytes of one token (special tokens render as nothing), cached: a vocabulary is small."""
        got = self._pieces.get(token)
        if got is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            got = self._pieces[token] = buf.raw[:n]
        return got

    def decode(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")


class Detokenizer:
    """Turns a sequence's tokens into text pieces; UTF-8 characters split across tokens are held until whole."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._decoder.decode(self._tokenizer.piece(token))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
