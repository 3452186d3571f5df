"""GLM's tokenizer: a sentencepiece model plus command tokens ([MASK], [sMASK], [gMASK], <|startofpiece|>, ...).

Command-token ids are read from the checkpoint directory (`added_tokens.json`, `tokenizer.json`, or
`tokenizer_config.json`'s `added_tokens_decoder`), never assumed. Without any of those, the layout of THUDM's
ChineseSPTokenizer is used (ids after the sentencepiece vocabulary); `fix_command_token` swaps the sMASK/gMASK
ids as GLM-Large-Chinese was trained (`--fix-command-token`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

# THUDM ChineseSPTokenizer order: offset after the sentencepiece vocabulary.
DEFAULT_LAYOUT = {
    "<|endoftext|>": 0, "[SEP]": 1, "[CLS]": 2, "[MASK]": 3, "[UNK]": 4,
    "<|startofpiece|>": 5, "<|endofpiece|>": 6, "[gMASK]": 7, "[sMASK]": 8,
}
MASK_TOKENS = ("[MASK]", "[sMASK]", "[gMASK]")
REQUIRED = ("<|endoftext|>", "[CLS]", "[MASK]", "<|startofpiece|>", "<|endofpiece|>")
SP_MODEL_NAMES = ("cog-pretrain.model", "tokenizer.model", "spiece.model")


class TokenizerError(ValueError):
    """A tokenizer directory is incomplete; the message names the file."""


class GLMTokenizer:
    def __init__(self, sp_model: str | Path, command_ids: dict[str, int] | None = None,
                 fix_command_token: bool = False, lower_case: bool = False) -> None:
        import sentencepiece as spm

        self.sp_path = Path(sp_model)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.sp_path))
        self.num_text_tokens = self.sp.get_piece_size()
        if command_ids is None:
            command_ids = {tok: self.num_text_tokens + off for tok, off in DEFAULT_LAYOUT.items()}
            if fix_command_token:
                command_ids["[gMASK]"], command_ids["[sMASK]"] = command_ids["[sMASK]"], command_ids["[gMASK]"]
        missing = [t for t in REQUIRED if t not in command_ids]
        if missing:
            raise TokenizerError(f"{self.sp_path.parent}: command tokens missing: {', '.join(missing)}")
        self.command_ids = dict(command_ids)
        self.command_tokens = {i: t for t, i in self.command_ids.items()}
        self.lower_case = lower_case
        pattern = "|".join(re.escape(t) for t in sorted(self.command_ids, key=len, reverse=True))
        self._split = re.compile(f"({pattern})")

    # ids ---------------------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return max(self.num_text_tokens, max(self.command_ids.values()) + 1)

    @property
    def eos_id(self) -> int:
        return self.command_ids["<|endoftext|>"]

    @property
    def pad_id(self) -> int:
        return self.command_ids.get("<|endoftext|>", 0)

    @property
    def cls_id(self) -> int:
        return self.command_ids["[CLS]"]

    @property
    def sop_id(self) -> int:
        return self.command_ids["<|startofpiece|>"]

    @property
    def eop_id(self) -> int:
        return self.command_ids["<|endofpiece|>"]

    @property
    def mask_ids(self) -> tuple[int, ...]:
        return tuple(self.command_ids[t] for t in MASK_TOKENS if t in self.command_ids)

    # text --------------------------------------------------------------------------------------------------------
    def split_commands(self, text: str) -> list[str]:
        """`text` cut into plain pieces and command tokens ("a[MASK]b" -> ["a", "[MASK]", "b"])."""
        return [part for part in self._split.split(text) if part]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; command tokens written in the text ([MASK], [gMASK], ...) become their ids."""
        ids: list[int] = []
        for part in self.split_commands(text):
            if part in self.command_ids:
                ids.append(self.command_ids[part])
            elif part.strip():
                ids.extend(self.sp.encode(part.lower() if self.lower_case else part))
        return ids

    def encode_prompt(self, text: str) -> list[int]:
        """Part A as GLM's hub tokenizer builds it: [CLS] text <|endoftext|>."""
        return [self.cls_id, *self.encode(text), self.eos_id]

    def decode(self, ids: list[int], skip_command_tokens: bool = True) -> str:
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i < self.num_text_tokens and i not in self.command_tokens:
                run.append(i)
                continue
            if run:
                out.append(self.sp.decode(run))
                run = []
            if not skip_command_tokens and i in self.command_tokens:
                out.append(self.command_tokens[i])
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)

    # files -------------------------------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, directory: str | Path) -> GLMTokenizer | None:
        """The tokenizer of a checkpoint directory, or None when it has no sentencepiece model."""
        directory = Path(directory)
        config = _read_json(directory / "tokenizer_config.json")
        named = config.get("vocab_file")
        candidates = [directory / named] if isinstance(named, str) else []
        candidates += [directory / n for n in SP_MODEL_NAMES] + sorted(directory.glob("*.model"))
        sp_model = next((c for c in candidates if c.is_file()), None)
        if sp_model is None:
            return None
        command_ids = _command_ids(directory, config)
        return cls(sp_model, command_ids or None, fix_command_token=bool(config.get("fix_command_token", False)),
                   lower_case=bool(config.get("do_lower_case", False)))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        if self.sp_path.resolve() != (directory / self.sp_path.name).resolve():
            shutil.copyfile(self.sp_path, directory / self.sp_path.name)
        (directory / "added_tokens.json").write_text(json.dumps(self.command_ids, indent=2) + "\n",
                                                     encoding="utf-8")
        config = {"vocab_file": self.sp_path.name, "do_lower_case": self.lower_case}
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{path}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
    return data if isinstance(data, dict) else {}


def _command_ids(directory: Path, config: dict) -> dict[str, int]:
    """Command-token ids from whichever file of the directory declares them."""
    known = set(DEFAULT_LAYOUT)
    ids: dict[str, int] = {}
    added = _read_json(directory / "added_tokens.json")
    ids.update({t: int(i) for t, i in added.items() if t in known})
    tokenizer_json = _read_json(directory / "tokenizer.json")
    for entry in tokenizer_json.get("added_tokens", []) or []:
        if entry.get("content") in known:
            ids.setdefault(entry["content"], int(entry["id"]))
    for i, entry in (config.get("added_tokens_decoder") or {}).items():
        if isinstance(entry, dict) and entry.get("content") in known:
            ids.setdefault(entry["content"], int(i))
    return ids
