"""Build the real CLIP BPE tokenizer files offline.

The open-clip-torch wheel ships CLIP's BPE merge list (``open_clip/bpe_simple_vocab_16e6.txt.gz``).
CLIP's vocabulary is derived from it: the 256 byte symbols, the same 256 with the end-of-word marker,
the first 48,894 merges joined, then ``<|startoftext|>`` and ``<|endoftext|>`` — 49,408 entries.
Only the data file is read; ``open_clip`` itself is never imported (it needs torchvision).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from ..errors import ModelFilesError

VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_symbols() -> list[str]:
    """CLIP's (GPT-2's) printable stand-ins for the 256 byte values, in vocabulary order.

    Printable bytes stand for themselves and come first; the other bytes follow in byte order,
    mapped to the characters from U+0100 on.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def bpe_file() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(
            "the CLIP vocabulary comes from the open-clip-torch wheel, which is not installed; "
            "install it without its dependencies: pip install --no-deps open-clip-torch"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise ModelFilesError(f"missing {path}: reinstall open-clip-torch (pip install --no-deps --force-reinstall open-clip-torch)")
    return path


def write_clip_tokenizer(folder: Path, pad_token: str = EOS) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs of CLIP into `folder`.

    pad_token: "<|endoftext|>" for SD1 / SDXL's first encoder, "!" for OpenCLIP encoders (SD2, SDXL's second).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(bpe_file(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + NUM_MERGES]]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ModelFilesError(f"{bpe_file()} gave {len(vocab)} tokens, expected {VOCAB_SIZE}: the file is not CLIP's BPE list")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
        "model_max_length": 77,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return folder
